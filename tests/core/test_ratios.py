"""Update-ratio arithmetic: exact sums, shard-additivity, aggregates, wrapper parts stripped from names."""

from __future__ import annotations

import math
import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from wesar_foundry.core.ratios import (
    PAIR, SCALED, Entry, Item, Packer, aggregate, clean_name, collect_sums, gained_sums, multiplied_sums,
    multiplier_gains, pair_sums, ratio, scaled_sums, uniformity, whole_vectors,
)
from wesar_foundry.reparam.multipliers import MultiplierMatrix


def _pair(old, new):
    """(num, den) of W̄ = new − old brute force in fp64."""
    old, new = old.double(), new.double()
    return float(((new - old) ** 2).sum()), float((old ** 2).sum())


def _tensors(rows=6, cols=5, rel=1e-3, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(rows, cols, generator=g)
    new = old + rel * torch.randn(rows, cols, generator=g)
    return old, new


def test_pair_sums_are_the_squared_norms_of_the_update_and_the_old_weight():
    old, new = _tensors()
    num, den = pair_sums(old, new).tolist()
    assert num == pytest.approx(_pair(old, new)[0], rel=1e-6)
    assert den == pytest.approx(_pair(old, new)[1], rel=1e-6)
    assert ratio(num, den) == pytest.approx(1e-3, rel=0.3)


@pytest.mark.parametrize('rel', [1e-2, 1e-5])
def test_scaled_sums_give_the_effective_ratio_even_for_tiny_updates(rel):
    old, new = _tensors(rel=rel)
    a_old, a_new = torch.tensor([3.5]), torch.tensor([3.5 * (1 + rel / 3)])
    packer = Packer()
    e = Entry('m', 'effective', 'q', 0, True)
    packer.add(e, SCALED, scaled_sums(old, new, a_old, a_new))
    num, den = packer.unpack(packer.vector())[e]
    want = _pair(a_old.double() * old.double(), a_new.double() * new.double())
    assert ratio(num, den) == pytest.approx(ratio(*want), rel=1e-6)


def test_gained_sums_handle_per_row_gains():
    old, new = _tensors(rows=4, cols=3)
    s_old = torch.rand(4, 1) + 0.5
    s_new = s_old * (1 + 1e-3 * torch.randn(4, 1))
    num, den = gained_sums(old, new, s_old, s_new).tolist()
    want = _pair(s_old.double() * old.double(), s_new.double() * new.double())
    assert num == pytest.approx(want[0], rel=1e-6) and den == pytest.approx(want[1], rel=1e-6)


@pytest.mark.parametrize('rel', [1e-2, 1e-6])
def test_multiplied_sums_give_the_ratio_of_row_and_column_multiplied_matrices_even_for_tiny_updates(rel):
    old, new = _tensors(rows=6, cols=5, rel=rel)
    g = torch.Generator().manual_seed(1)
    b = (torch.rand(6, 1, generator=g) + 0.5).double()
    c = (torch.rand(5, generator=g) + 0.5).double()
    a = b * (1 + rel * torch.randn(6, 1, generator=g).double())
    c_new = c * (1 + rel * torch.randn(5, generator=g).double())
    num, den = multiplied_sums(old, new, (b, c), (a, c_new)).tolist()
    want = _pair(b * old.double() * c, a * new.double() * c_new)
    assert num == pytest.approx(want[0], rel=1e-5) and den == pytest.approx(want[1], rel=1e-6)
    # Without a column vector it is the row-gain case (which takes fp32 gains, as gain() gives).
    b, a = b.float(), a.float()
    torch.testing.assert_close(multiplied_sums(old, new, (b.double(), None), (a.double(), None)),
                               gained_sums(old, new, b, a), rtol=1e-5, atol=0)


def _capture(pieces):
    """The packed vector one rank contributes to ``whole_vectors``' all-reduce."""
    got = []
    whole_vectors(pieces, lambda v: got.append(v.clone()))
    return got[0]


def test_whole_vectors_are_read_from_pieces_held_anywhere_also_by_replicas():
    # Two ranks, torch.chunk's split: a (1,) gate on rank 0 only, a 5-vector as 3 + 2.
    gate, vec = torch.tensor([0.75]), torch.arange(1.0, 6.0)
    rank0 = [(gate, 0, 1), (vec[:3], 0, 5)]
    rank1 = [(gate[:0], 1, 1), (vec[3:], 3, 5)]
    other = _capture(rank1)
    got = whole_vectors(rank0, lambda v: v.add_(other))
    assert [t.tolist() for t in got] == [[0.75], vec.tolist()] and got[0].dtype == torch.float64
    # HSDP: two replicas of the same split; every element counted twice, divided by two. Rank 1 of
    # the first replica sums with both rank 0s and with rank 1 of the second.
    others = 2 * _capture(rank0) + other
    got = whole_vectors(rank1, lambda v: v.add_(others))
    assert [t.tolist() for t in got] == [[0.75], vec.tolist()]
    assert [t.tolist() for t in whole_vectors([(vec, 0, 5)])] == [vec.tolist()]  # unsharded: no collective


@pytest.mark.parametrize('multipliers', ['row', 'column', 'row_column'])
def test_multiplier_gains_of_a_whole_matrix_are_its_row_and_column_gains(multipliers):
    m = _multiplier(multipliers, 'linear', 7, 5, seed=3)
    row, col = multiplier_gains([m])[id(m)]
    torch.testing.assert_close(row, m.row_gain().double().reshape(row.shape), rtol=1e-6, atol=0)
    if m.col_mult is None:
        assert col is None
    else:
        torch.testing.assert_close(col, m.col_gain().double(), rtol=1e-6, atol=0)


def test_sums_of_shards_add_up_to_the_sums_of_the_whole_tensor():
    # What FSDP relies on: any split of the flat tensor, gates held by one shard only.
    old, new = _tensors(rows=7, cols=3)
    a_old, a_new = torch.tensor([2.0]), torch.tensor([2.01])
    cut = 9  # not a row boundary
    halves = [(old.flatten()[:cut], new.flatten()[:cut], a_old, a_new),
              (old.flatten()[cut:], new.flatten()[cut:], a_old[:0], a_new[:0])]
    total = sum(scaled_sums(*h) for h in halves)
    torch.testing.assert_close(total, scaled_sums(old, new, a_old, a_new), rtol=1e-12, atol=0)
    total = sum(pair_sums(o, n) for o, n, _, _ in halves)
    torch.testing.assert_close(total, pair_sums(old, new), rtol=1e-12, atol=0)


def test_replicated_shards_as_in_hsdp_give_the_same_ratios():
    # Two replicas of a two-way shard: every sum doubles, and the gate is held twice.
    old, new = _tensors(rows=7, cols=3)
    a_old, a_new = torch.tensor([2.0]), torch.tensor([2.01])
    halves = [scaled_sums(old.flatten()[:9], new.flatten()[:9], a_old, a_new),
              scaled_sums(old.flatten()[9:], new.flatten()[9:], a_old[:0], a_new[:0])]
    packer = Packer()
    e = Entry('m', 'effective', 'q', 0, True)
    packer.add(e, SCALED, 2 * sum(halves))
    once = Packer()
    once.add(e, SCALED, scaled_sums(old, new, a_old, a_new))
    assert ratio(*packer.unpack(packer.vector())[e]) == pytest.approx(ratio(*once.unpack(once.vector())[e]), rel=1e-12)


def test_packer_layout_round_trips_mixed_widths():
    packer = Packer()
    a = Entry('a', 'raw', 'q', 0, True)
    b = Entry('b', 'effective', 'q', 0, True)
    packer.add(a, PAIR, torch.tensor([4.0, 16.0], dtype=torch.float64))
    packer.add(b, SCALED, torch.tensor([1.0, 0.0, 4.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    out = packer.unpack(packer.vector())
    assert out[a] == (4.0, 16.0)
    assert out[b] == (1.0, 4.0)  # gate unchanged: ‖ΔW̄‖² = a²ΣΔW²
    with pytest.raises(ValueError, match='pair sums need 2'):
        packer.add(a, PAIR, torch.zeros(3))


def test_uniformity_is_max_over_min_and_std_of_log_ratios():
    mm, ls = uniformity([0.01, 0.04, math.nan, 0.0])
    assert mm == pytest.approx(4.0)
    assert ls == pytest.approx(math.log(4.0) / 2)  # two values ln 4 apart: population std is half
    assert uniformity([0.02] * 5) == (1.0, pytest.approx(0.0, abs=1e-12))
    assert all(math.isnan(x) for x in uniformity([]))


def test_aggregates_pool_sums_per_role_and_layer_and_skip_vectors():
    sums = {
        Entry('l0.q', 'raw', 'q', 0, True): (1.0, 100.0),
        Entry('l1.q', 'raw', 'q', 1, True): (3.0, 100.0),
        Entry('l1.down', 'raw', 'down', 1, True): (16.0, 100.0),
        Entry('l1.norm', 'raw', None, 1, False): (1e6, 1.0),  # a norm gain: not a matrix
        Entry('l1.q.alpha', 'gate', 'q', 1, False): (1e-4, 1.0),
    }
    out = aggregate(sums)
    assert out['update_ratio/raw/role/q'] == pytest.approx(math.sqrt(4 / 200))
    assert out['update_ratio/raw/layer/1'] == pytest.approx(math.sqrt(19 / 200))
    assert out['update_ratio/raw/role/down'] == pytest.approx(0.4)
    assert out['update_ratio/raw/uniformity/max_over_min'] == pytest.approx(4.0)
    assert out['update_ratio/raw/max'] == pytest.approx(0.4)
    assert out['update_ratio/gate/role/q'] == pytest.approx(0.01)
    assert out['update_ratio/gate/max'] == pytest.approx(0.01)
    assert not any('layer' in k and 'gate' in k for k in out)


def test_an_entry_of_an_unknown_kind_is_refused():
    # The kind is part of every metric key: a misspelt one would log where no reader looks.
    with pytest.raises(ValueError, match=r"Entry.kind='effectiv'; allowed: raw, effective, gate"):
        Entry('m', 'effectiv', 'q', 0, True)


def test_wrapper_parts_are_stripped_from_names():
    assert clean_name('model._fsdp_wrapped_module.model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight') \
        == 'model.model.layers.0.mlp.up_proj.weight'
    assert clean_name('module.model.lm_head.weight') == 'model.lm_head.weight'
    assert clean_name('_orig_mod.model.norm.weight') == 'model.norm.weight'


# ---- sharding: two gloo processes, each with half of every tensor --------------------------


def _case(seed: int = 0):
    """A WeSaR matrix, a per-matrix plain weight and a norm vector, before and after an update."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, (shape, role) in enumerate([((9, 5), 'q'), ((5, 9), 'down'), ((7,), None)]):
        old = torch.randn(*shape, generator=g) * 0.02
        new = old + 1e-4 * torch.randn(*shape, generator=g)
        gate_old = torch.tensor([2.5 + i])
        gate_new = gate_old * (1 + 1e-5 * (i + 1))
        rows.append((f'layers.{i % 2}.m{i}', role, old, new, gate_old, gate_new))
    return rows


def _items(rows, rank: int | None):
    """Items over whole tensors (rank None) or over this rank's half of each flat tensor."""
    items, snap = [], {}
    for name, role, old, new, gate_old, gate_new in rows:
        if rank is not None:
            cut = (old.numel() + 1) // 2
            sl = slice(0, cut) if rank == 0 else slice(cut, None)
            old, new = old.flatten()[sl], new.flatten()[sl]
            # Like FSDP: the gate's one element lives on one rank, the other holds an empty view.
            gate_old, gate_new = (gate_old, gate_new) if rank == 0 else (gate_old[:0], gate_new[:0])
        layer = int(name.split('.')[1])
        is_matrix = role is not None
        items.append(Item(Entry(f'{name}.weight', 'raw', role, layer, is_matrix), 'raw', new))
        items.append(Item(Entry(f'{name}.alpha', 'gate', role, layer, False), 'raw', gate_new))
        if is_matrix:
            items.append(Item(Entry(name, 'effective', role, layer, True), 'scaled', new, gate=gate_new))
        snap[id(new)], snap[id(gate_new)] = old, gate_old
    return items, snap


def _worker(rank: int, path: str, init_file: str) -> None:
    # A peer that never comes would otherwise hold the suite for gloo's default 30 minutes.
    tdist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2,
                             timeout=timedelta(seconds=120))
    calls = []

    def all_reduce(v):
        calls.append(v.numel())
        tdist.all_reduce(v)

    items, snap = _items(_case(), rank)
    sums = collect_sums(items, snap, {}, all_reduce)
    if rank == 0:
        torch.save({'sums': {e.name + '/' + e.kind: s for e, s in sums.items()}, 'agg': aggregate(sums),
                    'calls': calls}, path)
    tdist.barrier()
    tdist.destroy_process_group()


@pytest.mark.slow  # spawns two processes
def test_two_gloo_ranks_with_half_of_every_tensor_reproduce_the_single_process_numbers(tmp_path):
    items, snap = _items(_case(), None)
    single = collect_sums(items, snap, {})
    out = tmp_path / 'rank0.pt'
    init_file = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_worker, args=(str(out), init_file), nprocs=2, join=True)
    got = torch.load(out)
    assert got['calls'] == [sum(6 if it.how == 'scaled' else 2 for it in items)]  # one collective, all sums
    want = {e.name + '/' + e.kind: s for e, s in single.items()}
    assert want and set(got['sums']) == set(want)
    for k, (num, den) in want.items():
        assert ratio(*got['sums'][k]) == pytest.approx(ratio(num, den), rel=1e-9), k
        assert ratio(num, den) > 0
    agg = aggregate(single)
    assert agg and set(got['agg']) == set(agg)
    for k, v in agg.items():
        assert got['agg'][k] == pytest.approx(v, rel=1e-9), k


# ---- sharding of the multipliers' matrices: two gloo processes, real FSDP2 shards ---------------

# (name, multipliers, kind, rows, cols): sizes no rank count divides, so c's split (3 + 2 of 5
# columns) is not W's (4 + 3 of 7 rows) and one rank holds no piece of α.
MULTIPLIED = [('layers.0.q', 'row_column', 'linear', 7, 5), ('layers.1.down', 'column', 'linear', 6, 3),
              ('emb', 'row', 'embedding', 9, 4)]


def _multiplier(multipliers: str, kind: str, rows: int, cols: int, seed: int) -> MultiplierMatrix:
    """A multipliers matrix with every parameter random: α, r, c and W all away from their init."""
    m = MultiplierMatrix(rows, cols, 'q', kind, multipliers=multipliers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.rand(p.shape, generator=g) + 0.5 if p.dim() == 1 else 0.02 * torch.randn(p.shape, generator=g))
    return m


def _multiplied_case() -> list[tuple[str, MultiplierMatrix, dict[str, torch.Tensor]]]:
    """Each matrix of ``MULTIPLIED`` and the values of its parameters after an update that moves all of them."""
    out = []
    for i, (name, multipliers, kind, rows, cols) in enumerate(MULTIPLIED):
        m = _multiplier(multipliers, kind, rows, cols, seed=10 + i)
        g = torch.Generator().manual_seed(20 + i)
        new = {n: p.detach() * (1 + 1e-3 * torch.randn(p.shape, generator=g)) for n, p in m.named_parameters()}
        out.append((name, m, new))
    return out


def _w_bar(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """α·diag(r̂)·W·diag(ĉ) in fp64 (merged_weight() is fp32: too coarse for the difference of two)."""
    unit = lambda v: v / v.square().mean().sqrt()  # noqa: E731
    w = p['alpha'].double() * p['weight'].double()
    w = w * unit(p['row_mult'].double()).unsqueeze(1) if 'row_mult' in p else w
    return w * unit(p['col_mult'].double()) if 'col_mult' in p else w


def _measure_multiplied(case, all_reduce=None, place=None) -> dict[str, tuple[float, float]]:
    """The monitor's steps on ``case``: snapshot (weights and gains), update, ``collect_sums``.
    ``place(p, whole)`` writes a parameter's new value (its local piece under FSDP2)."""
    items = [Item(Entry(name, 'effective', 'q', None, True), 'multiplied', m.weight, module=m) for name, m, _ in case]
    snap = {id(m.weight): m.weight.to_local().clone() if hasattr(m.weight, 'to_local') else m.weight.detach().clone()
            for _, m, _ in case}
    gains = multiplier_gains([m for _, m, _ in case], all_reduce)
    with torch.no_grad():
        for _, m, new in case:
            for n, p in m.named_parameters():
                place(p, new[n]) if place is not None else p.copy_(new[n])
    return {e.name: s for e, s in collect_sums(items, snap, gains, all_reduce).items()}


def _multiplied_worker(rank: int, path: str, init_file: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    tdist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2,
                             timeout=timedelta(seconds=120))
    mesh = init_device_mesh('cpu', (2,))
    case = _multiplied_case()
    for _, m, _ in case:
        fully_shard(m, mesh=mesh)
    calls = []

    def all_reduce(v):
        calls.append(v.numel())
        tdist.all_reduce(v)

    def place(p, whole):  # the new value's piece as DTensor splits it, whatever shard_offset says
        p.to_local().copy_(distribute_tensor(whole, mesh, p.placements).to_local())

    sums = _measure_multiplied(case, all_reduce, place)
    if rank == 0:
        pieces = {n: (tuple(p.to_local().shape), tuple(p.shape)) for n, p in case[0][1].named_parameters()}
        torch.save({'sums': sums, 'calls': calls, 'pieces': pieces}, path)
    tdist.barrier()
    tdist.destroy_process_group()


@pytest.mark.slow  # spawns two processes
def test_two_fsdp2_ranks_measure_the_multiplied_matrices_as_one_process_and_as_brute_force(tmp_path):
    case = _multiplied_case()
    want = {name: ratio(*_pair(_w_bar(dict(m.named_parameters())), _w_bar(new))) for name, m, new in case}
    single = _measure_multiplied(_multiplied_case())
    out = tmp_path / 'rank0.pt'
    mp.spawn(_multiplied_worker, args=(str(out), tempfile.mktemp(dir=tmp_path)), nprocs=2, join=True)
    got = torch.load(out)
    # Rank 0's pieces of the row_column matrix: 4 of 7 rows, 3 of 5 columns, the one α.
    assert got['pieces'] == {'weight': ((4, 5), (7, 5)), 'alpha': ((1,), (1,)), 'row_mult': ((4,), (7,)),
                             'col_mult': ((3,), (5,))}
    vectors = sum(m.weight.shape[0] * (m.row_mult is not None) + m.weight.shape[1] * (m.col_mult is not None) + 1
                  + (m.row_mult is not None) + (m.col_mult is not None) + 1 for _, m, _ in case)
    # The vectors read whole at the snapshot and after the update, then one collective of all sums.
    assert got['calls'] == [vectors, vectors, 2 * len(case)]
    for name, r in want.items():
        assert 1e-4 < r < 1e-2
        assert ratio(*single[name]) == pytest.approx(r, rel=1e-6), name
        assert ratio(*got['sums'][name]) == pytest.approx(r, rel=1e-6), name
