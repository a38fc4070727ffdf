from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autotune.config import PartitionSpec
from autotune.errors import ConfigError
from autotune.optim import FRUGAL, find_blocks, optimizer_state_bytes, partition, rotates
from autotune.optim.blocks import linear_weights

LR, WD = 1e-2, 0.1


def _train(model, optimizer, batches):
    for ids in batches:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _eligible_ids(model) -> set[int]:
    return {id(w) for block in find_blocks(model) for w in linear_weights(block)}


@pytest.mark.parametrize("placement", ["rotate", "top"])
def test_density_one_matches_torch_adamw(tiny_llama, token_batches, placement):
    model = tiny_llama()
    reference = copy.deepcopy(model)
    spec = PartitionSpec(density=1.0, placement=placement)
    # update_gap 3: the window moves 6 times, and under `cycle` blocks that stay active keep their
    # moments (the authors' `slide` restarts them at each move, so it is not AdamW even at density 1)
    frugal = FRUGAL(partition(model, spec), lr=LR, weight_decay=WD, density=1.0, update_gap=3, window="cycle")
    adamw = torch.optim.AdamW(reference.parameters(), lr=LR, weight_decay=WD, foreach=True)
    batches = token_batches(20)
    _train(model, frugal, batches)
    _train(reference, adamw, batches)
    for (name, got), want in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=name)


def test_density_zero_signsgd_on_eligible_adamw_on_the_rest(tiny_llama, token_batches):
    model = tiny_llama()
    reference = copy.deepcopy(model)
    frugal = FRUGAL(partition(model, PartitionSpec(density=0.0)), lr=LR, weight_decay=WD, density=0.0)
    eligible = _eligible_ids(reference)
    ref_eligible = [p for p in reference.parameters() if id(p) in eligible]
    ref_rest = [p for p in reference.parameters() if id(p) not in eligible]
    adamw = torch.optim.AdamW(ref_rest, lr=LR, weight_decay=WD, foreach=True)
    for ids in token_batches(5):
        # start every step from FRUGAL's parameters: a rounding-level difference in a gradient near
        # zero would flip its sign and turn into a whole lr-sized difference
        reference.load_state_dict(model.state_dict())
        for net in (model, reference):
            net(input_ids=ids, labels=ids).loss.backward()
        frugal.step()
        adamw.step()
        with torch.no_grad():
            for p in ref_eligible:
                p.copy_(p - LR * torch.sign(p.grad) - LR * WD * p)
        for (name, got), want in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=name)
        model.zero_grad()
        reference.zero_grad()
    assert not any(id(p) in _eligible_ids(model) for p in frugal.state)


@pytest.mark.parametrize(("rule", "expected"), [("sgd", lambda p, g: p - 0.5 * LR * g), ("none", lambda p, g: p)])
def test_other_state_free_rules_use_the_lr_scale(rule, expected):
    param = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    param.grad = torch.tensor([0.5, 0.0, -4.0])
    before = param.detach().clone()
    FRUGAL([{"params": [param], "statefull": False}], lr=LR, state_free_rule=rule, state_free_lr_scale=0.5).step()
    torch.testing.assert_close(param.detach(), expected(before, param.grad))


def test_state_bytes_follow_density(tiny_llama, token_batches):
    model = tiny_llama(layers=4)  # 28 equal 64x64 blocks: round(28 * 0.25) = 7 active
    eligible = _eligible_ids(model)
    n_eligible = sum(p.numel() for p in model.parameters() if id(p) in eligible)
    n_rest = sum(p.numel() for p in model.parameters()) - n_eligible
    analytic = (0.25 * n_eligible + n_rest) * 8
    frugal = FRUGAL(partition(model, PartitionSpec(density=0.25)), lr=LR, density=0.25, update_gap=1)
    blocks = frugal.param_groups[0]["params"]
    for ids in token_batches(6):
        _train(model, frugal, [ids])
        assert optimizer_state_bytes(frugal) == pytest.approx(analytic, rel=0.05)
        with_state = {id(p) for p in frugal.state if id(p) in eligible}
        assert with_state == {id(blocks[i]) for i in frugal.active_blocks()}


def test_state_bytes_of_torch_adamw_by_hand():
    params = [nn.Parameter(torch.zeros(3, 5)), nn.Parameter(torch.zeros(7))]
    for p in params:
        p.grad = torch.ones_like(p)
    adamw = torch.optim.AdamW(params, lr=LR)
    assert optimizer_state_bytes(adamw) == 0
    adamw.step()
    assert optimizer_state_bytes(adamw) == 2 * (15 + 7) * 4 + 2 * 4  # two moments, plus a float32 step each
    assert optimizer_state_bytes(adamw, params[1:]) == 2 * 7 * 4 + 4


def _quadratic_blocks(n: int) -> list[nn.Parameter]:
    return [nn.Parameter(torch.full((2, 2), float(i + 1))) for i in range(n)]


def _active_windows(optimizer: FRUGAL, blocks: list[nn.Parameter], steps: int) -> list[list[int]]:
    windows = []
    for _ in range(steps):
        for p in blocks:
            p.grad = p.detach().clone()
        optimizer.step()
        windows.append(optimizer.active_blocks())
    return windows


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("descending", [[5, 4, 3], [2, 1, 0], [5, 4, 3]]),
        ("ascending", [[0, 1, 2], [3, 4, 5], [0, 1, 2]]),
        ("sweep", [[0, 1, 2], [3, 4, 5], [5, 4, 3], [2, 1, 0], [0, 1, 2]]),
    ],
)
def test_cycle_rotation_visits_blocks_in_order_and_resets_state(order, expected):
    blocks = _quadratic_blocks(6)
    optimizer = FRUGAL([{"params": blocks, "rotate": True}], lr=LR, density=0.5, order=order, update_gap=2,
                       window="cycle")
    windows = _active_windows(optimizer, blocks, 2 * len(expected))
    assert windows[::2] == expected and windows[1::2] == expected
    # one step into a window: the block's moments restarted from zero, so its step count is 1 again
    for p in blocks:
        p.grad = p.detach().clone()
    optimizer.step()
    for i in optimizer.active_blocks():
        assert optimizer.state[blocks[i]]["step"].item() == 1.0
    inactive = set(range(6)) - set(optimizer.active_blocks())
    assert not any(blocks[i] in optimizer.state for i in inactive)


def test_cycle_rotation_wraps_and_keeps_state_of_blocks_that_stay_active():
    blocks = _quadratic_blocks(5)
    # k = round(5 * 0.4) = 2: windows [4,3], [2,1], [0,4] (wrap), then a new cycle [4,3]
    optimizer = FRUGAL([{"params": blocks, "rotate": True}], lr=LR, density=0.4, update_gap=1, window="cycle")
    assert _active_windows(optimizer, blocks, 4) == [[4, 3], [2, 1], [0, 4], [4, 3]]
    assert optimizer.state[blocks[4]]["step"].item() == 2.0  # active in the last two windows
    assert optimizer.state[blocks[3]]["step"].item() == 1.0


def test_random_cycle_visits_every_block_once_per_cycle():
    blocks = _quadratic_blocks(8)
    optimizer = FRUGAL([{"params": blocks, "rotate": True}], lr=LR, density=0.25, order="random", update_gap=1,
                       seed=3, window="cycle")
    windows = _active_windows(optimizer, blocks, 12)  # three cycles of four windows of two
    cycles = [sum(windows[c * 4 : c * 4 + 4], []) for c in range(3)]
    assert all(sorted(cycle) == list(range(8)) for cycle in cycles)
    assert len({tuple(cycle) for cycle in cycles}) > 1


def _steps_and_states(optimizer: FRUGAL, blocks: list[nn.Parameter], steps: int) -> list[tuple[list[int], dict]]:
    """Per step: the active window and each block's Adam step count (None: no state)."""
    seen = []
    for _ in range(steps):
        for p in blocks:
            p.grad = p.detach().clone()
        optimizer.step()
        counts = {i: (optimizer.state[p]["step"].item() if p in optimizer.state else None)
                  for i, p in enumerate(blocks)}
        seen.append((optimizer.active_blocks(), counts))
    return seen


def test_sliding_window_matches_the_authors_schedule_n21_k5_over_30_steps():
    """The authors' BlockOptimizer (github fzmushko/FRUGAL, frugal/proj_optimizer_templates.py, order
    'descending'): the window starts at block n-1, slides down by k modulo n at every move, never
    restarting, and at each move every rotating block's state is reset."""
    n, gap = 21, 2
    blocks = _quadratic_blocks(n)
    optimizer = FRUGAL([{"params": blocks, "rotate": True}], lr=LR, density=0.25, update_gap=gap)
    assert optimizer.window == "slide"                   # the default
    seen = _steps_and_states(optimizer, blocks, 30)
    windows = [active for active, _ in seen[::gap]]
    assert windows[:6] == [[20, 19, 18, 17, 16], [15, 14, 13, 12, 11], [10, 9, 8, 7, 6], [5, 4, 3, 2, 1],
                           [0, 20, 19, 18, 17], [16, 15, 14, 13, 12]]   # no restart after 0: it slides on
    assert windows == [[(n - 1 - 5 * w - i) % n for i in range(5)] for w in range(15)]
    for t, (active, counts) in enumerate(seen):
        # moments restart at every move: each active block has counted only the steps of its window
        assert all(counts[i] == t % gap + 1 for i in active)
        assert all(counts[i] is None for i in set(range(n)) - set(active))


def test_the_authors_mirror_takes_half_the_window_from_each_end():
    n, k = 12, 4
    blocks = _quadratic_blocks(n)
    optimizer = FRUGAL([{"params": blocks, "rotate": True}], lr=LR, density=k / n, order="mirror", update_gap=1)
    windows = _active_windows(optimizer, blocks, 4)
    assert set(windows[0]) == set(range(k // 2)) | set(range(n - k // 2, n))        # {0, 1} | {10, 11}
    assert [sorted(w) for w in windows] == [[0, 1, 10, 11], [2, 3, 8, 9], [4, 5, 6, 7], [0, 1, 10, 11]]


def test_mirror_refuses_an_odd_window_as_the_authors_do():
    with pytest.raises(ConfigError, match="even number of active blocks"):
        FRUGAL([{"params": _quadratic_blocks(21), "rotate": True}], lr=LR, density=0.25, order="mirror")


def test_random_slide_draws_a_fresh_window_each_move():
    blocks = _quadratic_blocks(8)
    optimizer = FRUGAL([{"params": blocks, "rotate": True}], lr=LR, density=0.25, order="random", update_gap=1, seed=3)
    windows = _active_windows(optimizer, blocks, 12)
    assert all(len(set(w)) == 2 for w in windows)
    assert len({tuple(w) for w in windows}) > 4


def test_sweep_ignores_the_window_rule():
    blocks = _quadratic_blocks(4)
    optimizer = FRUGAL([{"params": blocks, "rotate": True}], lr=LR, density=0.5, order="sweep", update_gap=1)
    assert optimizer.window == "cycle"
    assert _active_windows(optimizer, blocks, 4) == [[0, 1], [2, 3], [3, 2], [1, 0]]


def _save_and_resume(tmp_path, make, steps_before, batches):
    model, optimizer = make(seed=0)
    _train(model, optimizer, batches[:steps_before])
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    # a differently initialised model and optimizer prove that everything comes from the file
    resumed_model, resumed_optimizer = make(seed=7)
    checkpoint = torch.load(path, weights_only=True)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    _train(resumed_model, resumed_optimizer, batches[steps_before:])
    return resumed_model, resumed_optimizer


@pytest.mark.parametrize(
    "options",
    [
        {"order": "random", "update_gap": 3, "weight_decay": WD},
        {"mode": "column", "update_gap": 3, "weight_decay": WD},
    ],
)
def test_resume_is_bit_identical(tmp_path, tiny_llama, token_batches, options):
    spec = PartitionSpec(mode=options.get("mode", "block"))

    def make(seed):
        model = tiny_llama(seed=seed)
        return model, FRUGAL(partition(model, spec), lr=LR, density=0.25, seed=seed, **options)

    batches = token_batches(12)
    straight_model, straight_optimizer = make(seed=0)
    _train(straight_model, straight_optimizer, batches)
    resumed_model, resumed_optimizer = _save_and_resume(tmp_path, make, 5, batches)
    for (name, got), want in zip(resumed_model.named_parameters(), straight_model.parameters()):
        assert torch.equal(got, want), name
    assert resumed_optimizer.active_blocks() == straight_optimizer.active_blocks()


def test_column_indices_survive_a_low_precision_resume(tmp_path):
    # bf16 holds integers exactly only up to 256: indices must not pass through the parameter's dtype
    weight = nn.Parameter(torch.zeros(4, 1000, dtype=torch.bfloat16))
    make = lambda: FRUGAL([{"params": [weight], "rotate": True}], lr=LR, density=0.5, mode="column")  # noqa: E731
    optimizer = make()
    weight.grad = torch.ones_like(weight)
    optimizer.step()
    drawn = optimizer.state[weight]["columns"].clone()
    torch.save(optimizer.state_dict(), tmp_path / "opt.pt")
    resumed = make()
    resumed.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    assert torch.equal(resumed.state[weight]["columns"], drawn) and drawn.dtype == torch.int64


def test_loading_a_state_without_frugal_entry_fails():
    params = [nn.Parameter(torch.zeros(2))]
    adamw_state = torch.optim.AdamW(params, lr=LR).state_dict()
    with pytest.raises(ValueError, match="FRUGAL"):
        FRUGAL(params, lr=LR).load_state_dict(adamw_state)


def test_column_mode_at_density_one_is_adamw_and_at_zero_is_signsgd(tiny_llama, token_batches):
    batches = token_batches(6)
    results = {}
    for density in (0.0, 1.0):
        model = tiny_llama()
        groups = partition(model, PartitionSpec(mode="column", density=density))
        _train(model, FRUGAL(groups, lr=LR, weight_decay=WD, density=density, mode="column"), batches)
        results[density] = list(model.parameters())
    for density, options in ((0.0, {"density": 0.0}), (1.0, {"density": 1.0})):
        model = tiny_llama()
        _train(model, FRUGAL(partition(model, PartitionSpec(**options)), lr=LR, weight_decay=WD, **options), batches)
        for got, want in zip(results[density], model.parameters()):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_column_mode_keeps_a_density_share_of_state_and_redraws_it(tiny_llama, token_batches):
    model = tiny_llama()
    frugal = FRUGAL(partition(model, PartitionSpec(mode="column")), lr=LR, density=0.25, mode="column", update_gap=2)
    blocks = frugal.param_groups[0]["params"]
    drawn = []
    for ids in token_batches(4):
        _train(model, frugal, [ids])
        state = frugal.state[blocks[0]]
        assert state["exp_avg"].shape == (64, 16) and state["columns"].dtype == torch.int64
        drawn.append(state["columns"].tolist())
    assert drawn[0] == drawn[1] and drawn[2] == drawn[3] and drawn[1] != drawn[2]
    assert frugal.state[blocks[0]]["step"].item() == 2.0  # restarted at the re-draw on step 3


def test_statefull_groups_survive_zero_style_flattening():
    # DeepSpeed ZeRO replaces each group's tensors by one flat tensor; the group flag must still hold
    weights = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(5))]
    flat = nn.Parameter(torch.cat([w.detach().flatten() for w in weights]))
    flat.grad = torch.randn_like(flat)
    before = flat.detach().clone()
    optimizer = FRUGAL([{"params": weights, "statefull": False}], lr=LR)
    optimizer.param_groups[0]["params"] = [flat]
    optimizer.step()
    torch.testing.assert_close(flat.detach(), before - LR * torch.sign(flat.grad))
    assert not optimizer.state


def test_rotation_refuses_flattened_blocks():
    blocks = _quadratic_blocks(4)
    optimizer = FRUGAL([{"params": blocks, "rotate": True}], lr=LR)
    assert rotates(optimizer) and rotates([{"params": blocks, "rotate": True}])
    flat = nn.Parameter(torch.cat([b.detach().flatten() for b in blocks]))
    flat.grad = torch.ones_like(flat)
    optimizer.param_groups[0]["params"] = [flat]
    with pytest.raises(ValueError, match="ZeRO"):
        optimizer.step()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"density": 1.5}, "density"),
        ({"density": -0.1}, "density"),
        ({"order": "sideways"}, "order"),
        ({"state_free_rule": "adam"}, "state_free_rule"),
        ({"update_gap": -5}, "update_gap"),
        ({"update_gap": 0}, "update_gap"),
        ({"mode": "rows"}, "mode"),
        ({"state_free_lr_scale": -1.0}, "state_free_lr_scale"),
        ({"betas": (0.9, 1.0)}, "betas"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FRUGAL([nn.Parameter(torch.zeros(2))], lr=LR, **kwargs)


def test_bad_group_settings_are_rejected():
    param = nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="state_free_rule"):
        FRUGAL([{"params": [param], "statefull": False, "state_free_rule": "lion"}], lr=LR)
    with pytest.raises(ValueError, match="rotate"):
        FRUGAL([{"params": [param], "rotate": True, "statefull": True}], lr=LR)
    optimizer = FRUGAL([param], lr=LR)
    with pytest.raises(ValueError, match="rotate"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "rotate": True})
