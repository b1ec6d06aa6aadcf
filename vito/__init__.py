"""VITO: self-supervised pretraining on temporally displaced video frames (arXiv 2210.06433)."""
