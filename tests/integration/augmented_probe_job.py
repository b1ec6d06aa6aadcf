"""One rank of the augmented linear protocol on an image folder with the toy encoder, as a process of its own:
the resume tests start it, SIGKILL it (VITO_AUGMENTED_KILL_AFTER_STEP) and start it again.

    python -m tests.integration.augmented_probe_job ROOT CACHE OUT [CHECKPOINT_STEPS]
"""

from __future__ import annotations

import logging
import os
import sys

import torch

EPOCHS, BATCH = 4, 8


def run(rank: int, world: int, port: int, root: str, cache: str, out: str, checkpoint_steps: int = 0,
        kill_after_step: int | None = None) -> None:
    from tests.eval_images import toy_encoder
    from vito.config import ImageFolderBenchmark
    from vito.eval.protocols.augmented_linear import run_image_folder_augmented
    from vito.eval.protocols.image_folder import Encoder, ExtractionSettings

    logging.basicConfig(level=logging.INFO, format=f"rank {rank}: %(name)s: %(message)s")
    if kill_after_step is not None:
        os.environ["VITO_AUGMENTED_KILL_AFTER_STEP"] = str(kill_after_step)
    torch.set_num_threads(1)  # the same kernels in every process: the same bits
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                          GLOO_SOCKET_IFNAME="lo")
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    bench = ImageFolderBenchmark(root=root, resize=32, crop=28, knn=False, linear=False, linear_augmented=True,
                                 augmented_epochs=EPOCHS, augmented_batch_size=BATCH,
                                 augmented_checkpoint_steps=checkpoint_steps)
    model = toy_encoder()
    encoder = Encoder(model, "toy-2conv", torch.device("cpu"))
    # A loader worker on rank 0 of two, none elsewhere: the images must not depend on who decodes them.
    settings = ExtractionSettings(cache, shard_size=16, batch_size=8, workers=1 if rank == 0 and world > 1 else 0,
                                  storage_options={})
    outcome = run_image_folder_augmented("imagenet", bench, encoder, settings, seed=0, is_main=rank == 0)
    if rank == 0:
        torch.save({"metrics": outcome.metrics, "record": outcome.record,
                    "readout": outcome.extra_readouts["readout_augmented"]}, out)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run(0, 1, 0, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 0)
