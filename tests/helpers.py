"""Test-only pieces that configs can name by ``_target_``."""

from pathlib import Path

import lightning as L


class CrashAtStep(L.Callback):
    """Simulates a crash (e.g. a killed job) once training reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash at step {trainer.global_step}")


def wandb_records(path):
    """The protobuf records of a W&B run file (``run-<id>.wandb``: a LevelDB-style log of 32 KiB blocks after a
    7-byte ``:W&B`` header). wandb ≥ 0.2x reads it in its Go core only, so the tests read it here."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B", path
    block, offset, pending = 32768, 7, b""
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # no room for a record header: the block is padded
            offset += block - offset % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        payload = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            break  # zero padding at the end
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):  # FULL or LAST: one whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""
