import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


@pytest.fixture
def one_thread():
    """Run both sides of an exactness check on one CPU thread.

    DINOv2-S without registers is numerically touchy: a 1e-7 relative change of
    one weight tensor moves some attention probabilities by 2e-5. With several
    threads on a busy machine, BLAS may split a matrix product differently from
    one forward pass to the next, which is enough to break a 1e-5 comparison that
    has nothing to do with the capture; one thread makes both passes identical.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Folder factory: tiny_models("gpt2") builds (once) and returns a tiny random model folder."""
    from tiny import make_text_model

    root = tmp_path_factory.mktemp("tiny-text")
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = make_text_model(root, kind)
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def lm_models(tmp_path_factory):
    """Folder factory: lm_models("llama") builds (once) a tiny random model with its LM head (for generation)."""
    from tiny import make_lm_model

    root = tmp_path_factory.mktemp("tiny-lm")
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = make_lm_model(root, kind)
        return cache[kind]

    return get
