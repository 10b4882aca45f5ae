"""Shared by easel-diffusion's reference scripts: where their fixtures go and how they are
written (safetensors, contiguous, detached)."""

import os

from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "crates/easel-diffusion/tests/fixtures")


def save_fixture(tensors, name):
    """Writes `tensors` to FIXTURES/`name`, prints its size and returns its path."""
    os.makedirs(FIXTURES, exist_ok=True)
    path = os.path.join(FIXTURES, name)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    return path
