"""Metrics and probes on extracted features and predicted masks: kNN, linear, mCE, DAVIS J&F."""
