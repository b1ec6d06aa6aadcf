"""Probes on cached features: weighted kNN against a plain brute-force reference, and the linear probe's protocol
(separable and shuffled labels, lr chosen on held-out train only, determinism, state_dict, data parallel)."""

from __future__ import annotations

import inspect
import io
import math

import pytest
import torch

from vito.eval.scoring.knn import DEFAULT_BLOCK_BYTES, KnnResult, default_sizes, knn_evaluate, knn_predict
from vito.eval.scoring.linear import (
    LinearProbeResult,
    feature_stats,
    fit_linear_probe,
    stratified_holdout,
    train_linear,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ kNN reference


def reference_scores(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int, k: int, t: float):
    """DINO's weighted vote written plainly: float64, loops, neighbours ordered by (-similarity, bank index)."""
    bank64 = [[float(v) for v in row] for row in bank.double()]
    out = []
    for query in queries.double():
        q = [float(v) for v in query]
        q_norm = math.sqrt(sum(v * v for v in q))
        sims = []
        for index, row in enumerate(bank64):
            dot = sum(a * b for a, b in zip(q, row))
            sims.append((-(dot / (q_norm * math.sqrt(sum(v * v for v in row)))), index))
        sims.sort()
        scores = [0.0] * num_classes
        for neg_sim, index in sims[: min(k, len(sims))]:
            scores[int(bank_labels[index])] += math.exp(-neg_sim / t)
        out.append(scores)
    return out


def reference_ranking(scores: list[float]) -> list[int]:
    """Classes by score, best first, ties to the lower class index; classes without votes left out."""
    return [c for c in sorted(range(len(scores)), key=lambda c: (-scores[c], c)) if scores[c] > 0]


def random_set(seed: int, num_bank: int = 40, num_queries: int = 9, dim: int = 6, num_classes: int = 5):
    generator = torch.Generator().manual_seed(seed)
    bank = torch.randn(num_bank, dim, generator=generator).half()
    bank_labels = torch.randint(0, num_classes, (num_bank,), generator=generator)
    queries = torch.randn(num_queries, dim, generator=generator)
    return bank, bank_labels, queries


@pytest.mark.parametrize("temperature", [0.07, 0.5, 2.0])
def test_knn_weighted_vote_matches_brute_force(temperature):
    bank, bank_labels, queries = random_set(1)
    ks = (1, 3, 10, 40, 100)  # 100 > the bank's 40: clamped
    scores = knn_predict(bank, bank_labels, queries, 5, ks, temperature, return_scores=True)
    ranked = knn_predict(bank, bank_labels, queries, 5, ks, temperature)
    for k in ks:
        expected = reference_scores(bank, bank_labels, queries, 5, k, temperature)
        torch.testing.assert_close(scores[k].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=0)
        for row, exp in zip(ranked[k].tolist(), expected):
            want = reference_ranking(exp)[:5]
            assert row[: len(want)] == want and all(c == -1 for c in row[len(want):])


def test_knn_ties_go_to_the_lower_class_and_duplicated_neighbours_both_vote():
    # Two identical bank rows labelled 3 and 1 are each query's nearest pair: equal votes, class 1 wins.
    bank = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]]).half()
    bank_labels = torch.tensor([3, 1, 2, 2, 0])
    queries = torch.tensor([[2.0, 0.1], [0.05, 3.0]])
    ranked = knn_predict(bank, bank_labels, queries, 4, (2, 4), 0.07)
    assert ranked[2][0, :2].tolist() == [1, 3]  # a tie: lower class first
    assert ranked[2][1, 0].item() == 2  # two equal-similarity neighbours, same class
    for k in (2, 4):
        expected = reference_scores(bank, bank_labels, queries, 4, k, 0.07)
        for row, exp in zip(ranked[k].tolist(), expected):
            want = reference_ranking(exp)
            assert row[: len(want)] == want


def test_knn_chunking_and_bank_blocks_give_the_same_predictions():
    bank, bank_labels, queries = random_set(2, num_bank=300, num_queries=37, dim=8, num_classes=7)
    ks = (1, 5, 20, 200)
    whole = knn_predict(bank, bank_labels, queries, 7, ks, 0.1, chunk_size=10_000, bank_block_size=10_000, return_scores=True)
    whole_ranked = knn_predict(bank, bank_labels, queries, 7, ks, 0.1, chunk_size=10_000, bank_block_size=10_000)
    for chunk, block in [(1, 300), (5, 7), (37, 1), (16, 64)]:
        scores = knn_predict(bank, bank_labels, queries, 7, ks, 0.1, chunk_size=chunk, bank_block_size=block, return_scores=True)
        ranked = knn_predict(bank, bank_labels, queries, 7, ks, 0.1, chunk_size=chunk, bank_block_size=block)
        for k in ks:
            torch.testing.assert_close(scores[k], whole[k], rtol=1e-5, atol=0)  # fp32 sums in another order
            assert torch.equal(ranked[k], whole_ranked[k])


@pytest.mark.parametrize("chunk", [None, 64, 512, 4096])
def test_default_sizes_bound_the_chunk_the_block_and_their_similarities(chunk):
    # ImageNet-1k: a 1.28M x 2048 bank, 50k queries, fp32 compute on CPU.
    got_chunk, block = default_sizes(50_000, 1_281_167, 2048, chunk_size=chunk)
    assert got_chunk == (chunk or 4096)
    for size in (got_chunk * 2048 * 4, block * 2048 * 4, got_chunk * block * 4):
        assert size <= DEFAULT_BLOCK_BYTES


def test_knn_evaluate_accuracies_and_recorded_constants():
    bank, bank_labels, queries = random_set(3, num_bank=50, num_queries=30, num_classes=6)
    query_labels = torch.randint(0, 6, (30,), generator=torch.Generator().manual_seed(9))
    result = knn_evaluate(bank, bank_labels, queries, query_labels, 6, k_values=(3, 20, 200), temperature=0.2, chunk_size=7)
    assert isinstance(result, KnnResult)
    assert (result.k_values, result.temperature, result.num_queries, result.num_bank) == ((3, 20, 200), 0.2, 30, 50)
    assert result.k_effective == {3: 3, 20: 20, 200: 50} and result.chunk_size == 7
    for k in (3, 20, 200):
        rankings = [reference_ranking(s) for s in reference_scores(bank, bank_labels, queries, 6, k, 0.2)]
        top1 = sum(bool(r) and r[0] == y for r, y in zip(rankings, query_labels.tolist())) / 30
        top5 = sum(y in r[:5] for r, y in zip(rankings, query_labels.tolist())) / 30
        assert result.top1[k] == pytest.approx(top1) and result.top5[k] == pytest.approx(top5)
    assert result.as_dict()["knn_top1_k20"] == result.top1[20]


def test_knn_self_queries_find_themselves_and_bad_inputs_are_refused():
    bank, bank_labels, _ = random_set(4, num_bank=64, dim=16)
    assert knn_evaluate(bank, bank_labels, bank, bank_labels, 5, k_values=(1,)).top1[1] == 1.0
    with pytest.raises(ValueError, match="same D"):
        knn_predict(bank, bank_labels, torch.randn(3, 15), 5)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(bank, bank_labels, bank, 5, temperature=0.0)
    with pytest.raises(ValueError, match="labels"):
        knn_predict(bank, bank_labels, bank, 3)


# ------------------------------------------------------------------------------------------ linear probe


def blobs(seed: int, n: int, num_classes: int = 4, dim: int = 12, spread: float = 4.0, shift: int = 0):
    """Gaussian blobs around fixed class centres (the centres depend on nothing but dim and num_classes);
    labels shifted by `shift` (mod C) to make a set whose labels disagree with the centres."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234)) * spread
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=generator)
    x = (centres[y] + torch.randn(n, dim, generator=generator) + 7.0) * 0.01  # off-centre and small: standardising matters
    return x.half(), (y + shift) % num_classes


FAST = dict(epochs=10, batch_size=64)


def test_linear_probe_separates_a_linearly_separable_set():
    x, y = blobs(0, 400)
    test_x, test_y = blobs(1, 1000)
    result = fit_linear_probe(x, y, 4, lr_grid=(0.1, 1.0), **FAST)
    assert result.top1(x, y) == 1.0
    assert result.top1(test_x, test_y) >= 0.99
    assert result.weight.shape == (4, 12) and result.bias.shape == (4,)
    # Recorded: the train split's statistics and the protocol constants.
    mean, std = feature_stats(x)
    assert torch.allclose(result.mean, mean) and torch.allclose(result.std, std)
    assert (result.epochs, result.batch_size, result.holdout_fraction, result.seed) == (10, 64, 0.1, 0)
    assert result.effective_lr == result.lr * 64 / 256 and set(result.lr_grid) == {0.1, 1.0}


def test_linear_probe_on_shuffled_labels_is_at_chance():
    # Test labels drawn independently of everything the probe saw: each prediction is right with probability
    # exactly 1/C whatever the probe learned, so correct ~ Binomial(n, 1/C). n = 4000, C = 4: sd = 0.0068;
    # the bound 0.035 is 5 sd (the seeds are fixed, so this is a fixed check, not a flaky one).
    generator = torch.Generator().manual_seed(5)
    x, _ = blobs(2, 400)
    y = torch.randint(0, 4, (400,), generator=generator)
    test_x, _ = blobs(3, 4000)
    test_y = torch.randint(0, 4, (4000,), generator=generator)
    result = fit_linear_probe(x, y, 4, lr_grid=(1.0,), **FAST)
    assert abs(result.top1(test_x, test_y) - 0.25) < 0.035
    assert math.isnan(result.lr_grid[1.0]) and result.holdout_fraction == 0.0  # one lr: nothing held out


def test_lr_is_chosen_on_held_out_train_never_on_val():
    # The API has no way to hear about val.
    params = set(inspect.signature(fit_linear_probe).parameters)
    assert not {p for p in params if "val" in p or "test" in p}
    x, y = blobs(4, 400)
    val_x, val_y = blobs(5, 1000, shift=1)  # val's labels shifted: a good probe scores ~0 there
    grid = (1e-5, 1.0)
    result = fit_linear_probe(x, y, 4, lr_grid=grid, **FAST)

    # The held-out scores are those of the train-only split, recomputed here from the public pieces.
    fit_idx, held_idx = stratified_holdout(y, 0.1, 0)
    assert set(fit_idx.tolist()).isdisjoint(held_idx.tolist()) and len(fit_idx) + len(held_idx) == 400
    mean, std = feature_stats(x, indices=fit_idx)
    on_val = {}
    for lr in grid:
        weight, bias = train_linear(x, y, 4, lr, seed=0, mean=mean, std=std, indices=fit_idx, **FAST)
        probe = LinearProbeResult(weight, bias, mean, std, lr, {}, 10, 64, 0.1, 0)
        assert result.lr_grid[lr] == probe.top1(x[held_idx], y[held_idx])
        on_val[lr] = probe.top1(val_x, val_y)
    assert result.lr == 1.0 and result.lr_grid[1.0] > result.lr_grid[1e-5]
    assert max(on_val, key=on_val.get) == 1e-5  # choosing on val would have picked the other lr


def test_stratified_holdout_is_per_class_and_seeded():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 1 + [3] * 2)
    fit_idx, held_idx = stratified_holdout(y, 0.1, seed=3)
    assert torch.bincount(y[held_idx], minlength=4).tolist() == [5, 3, 0, 1]
    assert torch.equal(held_idx, stratified_holdout(y, 0.1, seed=3)[1])
    assert not torch.equal(held_idx, stratified_holdout(y, 0.1, seed=4)[1])


def test_linear_probe_is_deterministic_given_a_seed():
    x, y = blobs(6, 200)
    a = fit_linear_probe(x, y, 4, lr_grid=(0.1, 1.0), seed=7, **FAST)
    b = fit_linear_probe(x, y, 4, lr_grid=(0.1, 1.0), seed=7, **FAST)
    c = fit_linear_probe(x, y, 4, lr_grid=(0.1, 1.0), seed=8, **FAST)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) and a.lr_grid == b.lr_grid
    assert not torch.equal(a.weight, c.weight)


def test_state_dict_round_trip_gives_the_same_logits():
    x, y = blobs(7, 200)
    result = fit_linear_probe(x, y, 4, lr_grid=(0.3, 3.0), standardize=False, **FAST)
    buffer = io.BytesIO()
    torch.save(result.state_dict(), buffer)
    buffer.seek(0)
    loaded = LinearProbeResult.from_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(loaded.logits(x), result.logits(x))
    assert loaded.as_dict() == result.as_dict() and loaded.lr_grid == result.lr_grid
    assert (loaded.lr, loaded.standardize, loaded.epochs) == (result.lr, False, 10)
    assert torch.equal(loaded.mean, torch.zeros(12)) and torch.equal(loaded.std, torch.ones(12))


def _data_parallel_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y = blobs(8, 300)
        result = fit_linear_probe(x, y, 4, lr_grid=(0.1, 1.0), epochs=4, batch_size=63)
        if rank == 0:
            torch.save(result.state_dict(), out_file)
    finally:
        dist.destroy_process_group()


def test_data_parallel_over_two_ranks_matches_one_process(tmp_path):
    # Two gloo ranks, each a slice of every batch (63: uneven slices), gradients all-reduced.
    # fork, not spawn (which re-imports torch: ~8 s here). Safe because this module runs torch on one intra-op
    # thread (set_num_threads(1) above), so no busy OpenMP pool is forked.
    torch.multiprocessing.start_processes(
        _data_parallel_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "probe.pt")), nprocs=2, join=True,
        start_method="fork",
    )
    parallel = LinearProbeResult.from_state_dict(torch.load(tmp_path / "probe.pt", weights_only=True))
    x, y = blobs(8, 300)
    alone = fit_linear_probe(x, y, 4, lr_grid=(0.1, 1.0), epochs=4, batch_size=63)
    assert parallel.lr == alone.lr and parallel.lr_grid == pytest.approx(alone.lr_grid)
    torch.testing.assert_close(parallel.weight, alone.weight, rtol=1e-4, atol=1e-6)  # float reduction order only
    torch.testing.assert_close(parallel.bias, alone.bias, rtol=1e-4, atol=1e-6)
