"""Every loader yields sample indices into the (sub)set it trains on (``0 <= batch.idx < num_train``, with the
labels of those samples), keeps the streamed loader's workers alive across epochs, and cuts epochs into rank slices
and resumed tails that are exactly the pieces of the one-process epoch."""

from __future__ import annotations

import pytest
import torch

from benchmarks.bench_streamed_loader import dataset_config, write_image_folder
from discbench.api import FeatureSpec, LossContext
from discbench.data import ResidentData, StreamedImageFolder
from discbench.registry import LOSSES


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    write_image_folder(root, images=36, classes=3, side=40)  # 36 train, 4 val... per the script's split rule
    return root


def streamed(root, workers=0, train=20, test=3):
    return StreamedImageFolder(dataset_config(3, 32), root, torch.device("cpu"), workers=workers).subset(train, test)


def resident(train=50):
    cfg = dataset_config(3, 8)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (120, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (120,), generator=g)
    return ResidentData(cfg, (x, y), (x[:10], y[:10]), torch.device("cpu")).subset(train, 10)


def test_streamed_subset_yields_subset_positions_with_their_labels(image_folder):
    data = streamed(image_folder)
    assert data.num_train == 20 and len(data.train) == 36  # the subset is smaller than the folder
    seen = []
    for batch in data.train_epoch(4, torch.Generator().manual_seed(0)):
        assert ((batch.idx >= 0) & (batch.idx < data.num_train)).all()
        expected = [data.train.targets[data.train_indices[i]] for i in batch.idx.tolist()]
        assert batch.y.tolist() == expected  # position -> ImageFolder index -> that image's label
        seen += batch.idx.tolist()
    assert sorted(seen) == list(range(20))  # 5 full batches: every position once


def test_resident_subset_yields_subset_positions_with_their_labels():
    data = resident()
    for batch in data.train_epoch(16, torch.Generator().manual_seed(0)):
        assert ((batch.idx >= 0) & (batch.idx < data.num_train)).all()
        assert torch.equal(batch.y, data.train_y[batch.idx])


def test_crd_memory_bank_indexed_by_a_streamed_subset(image_folder):
    """The reported failure: CRD's bank has num_train rows, the streamed path indexed it with full-folder indices."""
    data = streamed(image_folder)
    crd = LOSSES.get("crd")(FeatureSpec(8, 4), FeatureSpec(8, 4), dim=4, nce_k=5)
    for batch in data.train_epoch(4, torch.Generator().manual_seed(0)):
        ctx = LossContext(step=0, epoch=0, protocol="self", labels=batch.y, indices=batch.idx,
                          dataset_size=data.num_train, num_classes=3)
        out = crd(torch.randn(4, 8, 2, 2), torch.randn(4, 8, 2, 2), ctx)
        assert torch.isfinite(out.loss)
    assert crd.memory_source.shape[0] == data.num_train


def test_streamed_workers_stay_alive_across_epochs(image_folder):
    data = streamed(image_folder, workers=2)
    generator = torch.Generator().manual_seed(0)
    pids = []
    for _ in range(2):
        for _ in data.train_epoch(4, generator):
            pass
        pids.append(sorted(w.pid for w in data._loader._iterator._workers))
    assert pids[0] == pids[1] and all(pids[0])
    assert all(w.is_alive() for w in data._loader._iterator._workers)
    list(data.test_batches(2))
    test_workers = sorted(w.pid for w in data._test_loader._iterator._workers)
    list(data.test_batches(2))
    assert sorted(w.pid for w in data._test_loader._iterator._workers) == test_workers


@pytest.mark.parametrize("kind", ["resident", "streamed"])
def test_rank_slices_and_resumed_tails_are_pieces_of_the_epoch(kind, image_folder):
    data = resident() if kind == "resident" else streamed(image_folder)
    batch = 8 if kind == "resident" else 4
    order = data.epoch_order(torch.Generator().manual_seed(3))
    full = [b.idx for b in data.train_epoch(batch, torch.Generator(), order)]
    ranks = [[b.idx for b in data.train_epoch(batch, torch.Generator(), order, rank=r, world_size=2)]
             for r in range(2)]
    assert [torch.cat([a, b]).tolist() for a, b in zip(*ranks, strict=True)] == [i.tolist() for i in full]
    tail = [b.idx.tolist() for b in data.train_epoch(batch, torch.Generator(), order, start=2)]
    assert tail == [i.tolist() for i in full[2:]]
