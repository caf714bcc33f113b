import random
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from detector.modeling.nasfpn import NASFPNCell, NASFPNNeck, resample
from search_spaces import fpn, nasfpn, neck_cost
from search_spaces.cost import level_size
from search_spaces.space import SearchSpace
from tests.nasfpn_reference import NASFPN_DECODED


def _features(levels, channels, height, width, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        level: torch.randn(batch, channels, *level_size((height, width), level), generator=generator)
        for level in levels
    }


@pytest.mark.parametrize(("height", "width"), [(128, 128), (200, 333), (97, 61)])
def test_neck_keeps_levels_and_sizes_for_any_input_size(height, width):
    arch = nasfpn()
    neck = NASFPNNeck(arch, in_channels=16, width=8, repeats=2, norm="gn")
    features = _features(arch.levels, 16, height, width)
    out = neck(features)
    assert list(out) == list(arch.levels)
    for level in arch.levels:
        assert out[level].shape == (2, 8, *features[level].shape[-2:])
        assert torch.isfinite(out[level]).all()


def test_neck_on_p2_to_p6_with_per_level_channels():
    arch = nasfpn((2, 3, 4, 5, 6))
    channels = {2: 8, 3: 16, 4: 32, 5: 64, 6: 64}
    neck = NASFPNNeck(arch, in_channels=channels, width=16, repeats=1, norm="bn")
    features = {
        level: torch.randn(1, channels[level], *level_size((150, 90), level)) for level in arch.levels
    }
    out = neck(features)
    assert {level: tuple(t.shape[1:]) for level, t in out.items()} == {
        level: (16, *features[level].shape[-2:]) for level in arch.levels
    }


def test_neck_rejects_missing_levels():
    neck = NASFPNNeck(nasfpn(), in_channels=8, width=8, repeats=1)
    features = _features((3, 4, 5, 6), 8, 64, 64)
    with pytest.raises(ValueError, match=r"missing pyramid levels \[7\]"):
        neck(features)
    with pytest.raises(ValueError, match=r"in_channels: no channel count for levels \[7\]"):
        NASFPNNeck(nasfpn(), in_channels={3: 8, 4: 8, 5: 8, 6: 8}, width=8)


def _dependencies(decoded):
    """Pyramid inputs that each output level reads, transitively, from the reference's decoding."""
    reads = {entry: {entry} for entry in range(5)}
    outputs = {}
    for entry, _, inputs, level, unused in decoded:
        reads[entry] = set().union(*(reads[i] for i in inputs | set(unused)))
        if entry >= 7:
            outputs[level] = {3 + i for i in reads[entry]}
    return outputs


def test_nasfpn_module_reads_exactly_the_published_connections():
    """Gradients flow from each output exactly to the inputs the decoded reference graph says."""
    expected = _dependencies(NASFPN_DECODED)
    arch = nasfpn()
    torch.manual_seed(0)
    neck = NASFPNNeck(arch, in_channels=8, width=8, repeats=1, norm="none").eval()
    for level, sources in expected.items():
        features = {k: v.requires_grad_() for k, v in _features(arch.levels, 8, 512, 512, batch=1).items()}
        neck(features)[level].abs().sum().backward()
        reached = {k for k, v in features.items() if v.grad is not None and v.grad.abs().sum() > 0}
        assert reached == sources, f"P{level}' reads {sorted(reached)}, reference says {sorted(sources)}"
    assert expected[3] == {3, 4, 6} and expected[5] == {3, 4, 5, 6}


def test_attention_gates_the_fine_input_with_the_pooled_coarse_input():
    cell_max = NASFPNCell(nasfpn(), channels=2, norm="none", attention_pool="max")
    cell_avg = NASFPNCell(nasfpn(), channels=2, norm="none", attention_pool="avg")
    fine = torch.randn(1, 2, 4, 4)
    coarse = torch.randn(1, 2, 4, 4)
    gate_max = torch.sigmoid(coarse.amax(dim=(2, 3), keepdim=True))
    gate_avg = torch.sigmoid(coarse.mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(cell_max._attention(fine, coarse), coarse + fine * gate_max)
    torch.testing.assert_close(cell_avg._attention(fine, coarse), coarse + fine * gate_avg)


def test_resample_hits_exact_sizes_and_matches_strided_pooling_when_sizes_divide():
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(resample(x, (4, 4), upsample=False), torch.nn.functional.max_pool2d(x, 4, 4))
    up = resample(x[..., :4, :4], (16, 16), upsample=True)
    torch.testing.assert_close(up, x[..., :4, :4].repeat_interleave(4, -1).repeat_interleave(4, -2))
    odd = torch.randn(1, 3, 25, 13)
    assert resample(odd, (7, 4), upsample=False).shape[-2:] == (7, 4)
    assert resample(odd, (50, 26), upsample=True).shape[-2:] == (50, 26)


def test_repeats_have_their_own_weights():
    neck = NASFPNNeck(nasfpn(), in_channels=8, width=8, repeats=3, norm="bn")
    first = neck.cells[0].post_ops[0][1].weight
    second = neck.cells[1].post_ops[0][1].weight
    assert first.data_ptr() != second.data_ptr()
    per_cell = 8 * 8 * 9 + 2 * 8  # conv without bias + BN affine
    assert sum(p.numel() for p in neck.parameters()) == 3 * 7 * per_cell


@pytest.mark.parametrize("norm", ["bn", "gn", "none"])
def test_neck_cost_equals_what_torch_counts_on_the_built_neck(norm):
    """The pure-Python cost against torch's FLOP counter on the real module (an independent count)."""
    space = SearchSpace(nasfpn().levels)
    cells = [fpn(), nasfpn(), *(space.random_architecture(random.Random(seed)) for seed in range(3))]
    width, repeats, size = 8, 2, (100, 60)
    for arch in cells:
        with torch.device("meta"):
            neck = NASFPNNeck(arch, width, width=width, repeats=repeats, norm=norm).eval()
            features = {level: torch.zeros(1, width, *level_size(size, level)) for level in arch.levels}
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            neck(features)
        cost = neck_cost(arch, size, width=width, repeats=repeats, norm=norm)
        assert cost.flops == counter.get_total_flops() > 0, arch
        assert cost.params == sum(p.numel() for p in neck.parameters()), arch
    assert neck_cost(fpn(), (200, 120), width=width).flops > neck_cost(fpn(), size, width=width).flops


def test_search_spaces_imports_no_torch():
    """Listing, hashing, drawing and costing cells must not pay torch's start-up."""
    code = "import sys, search_spaces, search_spaces.render, search_spaces.space; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_norm_choices():
    for norm in ("bn", "gn", "none"):
        NASFPNNeck(nasfpn(), in_channels=8, width=8, repeats=1, norm=norm)(_features(nasfpn().levels, 8, 32, 32))
    with pytest.raises(ValueError, match="norm: unknown kind 'ln'"):
        NASFPNNeck(nasfpn(), in_channels=8, width=8, norm="ln")
    with pytest.raises(ValueError, match="attention_pool"):
        NASFPNNeck(nasfpn(), in_channels=8, width=8, attention_pool="min")
