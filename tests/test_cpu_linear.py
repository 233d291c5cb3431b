"""Prepacked CPU linears: same results as nn.Linear, rows independent of the batch, plain path kept."""

from __future__ import annotations

import pytest
import torch
from helpers import IN_CI, tiny_llama

from lm_eval_routed.core.cpu_linear import PackedLinear, packed_weight, prepack_linears, supported

# The pinned CPU torch has it: under CI=true these run (and fail) whatever supported() says.
pytestmark = pytest.mark.skipif(
    not supported(torch.float32) and not IN_CI,
    reason="this torch build has no prepacked oneDNN linear",
)


def test_prepacked_model_matches_plain():
    model = tiny_llama(2, seed=3)
    ids = torch.randint(0, 60, (2, 9))
    with torch.inference_mode():
        plain = model(ids).logits
        assert prepack_linears(model) == sum(
            isinstance(m, torch.nn.Linear) for m in model.modules()
        )
        packed = model(ids).logits
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)


def test_layers_over_one_weight_share_its_packed_copy():
    first, second = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)
    second.weight = first.weight  # a second module tree over the same weight
    for layer in (first, second):
        prepack_linears(layer)
    x = torch.randn(4, 16)
    with torch.inference_mode():
        first(x), second(x)
    assert first.__dict__["_routed_packed"] is second.__dict__["_routed_packed"]
    assert packed_weight(first.weight) is first.__dict__["_routed_packed"]


def test_each_row_is_the_same_at_any_padded_row_count():
    # decoding outputs must not depend on which rows share a forward; the engine pads row counts
    # to a multiple of 4 (one row alone may take a matrix-vector kernel that rounds differently)
    layer = torch.nn.Linear(96, 200, bias=True)
    prepack_linears(layer)
    x = torch.randn(16, 96)
    with torch.inference_mode():
        full = layer(x)
        for n in (4, 8, 12):
            assert torch.equal(layer(x[:n]), full[:n])


def test_training_and_weight_changes_take_the_plain_path():
    layer = torch.nn.Linear(16, 8)
    prepack_linears(layer)
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).sum().backward()  # grad mode: nn.Linear's own autograd
    assert layer.weight.grad is not None and x.grad is not None
    with torch.no_grad():
        layer.weight.mul_(2.0)
        torch.testing.assert_close(
            layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias)
        )


def test_runtime_records_and_honours_prepack(make_runtime, pair):
    unpacked = make_runtime(router="random", p="0.3", prepack="false")
    assert unpacked.info()["routed"]["prepacked"] is False
    assert not any(isinstance(m, PackedLinear) for m in unpacked.decoder.llm.model.modules())
    packed = make_runtime(router="random", p="0.3")
    assert packed.info()["routed"]["prepacked"] is True
    assert any(isinstance(m, PackedLinear) for m in packed.decoder.llm.model.modules())
    assert unpacked.info()["routed"]["prepacked"] is False  # each runtime keeps its own
    # the engines prepack copies of their own: the models stay as they were loaded
    assert not any(isinstance(m, PackedLinear) for model in pair for m in model.modules())


def test_layers_in_a_dtype_the_cpu_lacks_stay_plain():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8).half(), torch.nn.Linear(8, 8))
    packed = prepack_linears(model)
    fp16_packed = isinstance(model[0], PackedLinear)
    assert fp16_packed == supported(torch.float16)
    assert isinstance(model[1], PackedLinear) and packed == 1 + fp16_packed


def test_a_prepacked_model_copies_pickles_and_casts(tmp_path):
    import copy

    model = tiny_llama(2, seed=4)
    ids = torch.randint(0, 60, (2, 7))
    prepack_linears(model)
    with torch.inference_mode():
        want = model(ids).logits
    twin = copy.deepcopy(model)  # oneDNN's packed tensors cannot be copied: left out, rebuilt
    with torch.inference_mode():
        assert torch.equal(twin(ids).logits, want) and torch.equal(model(ids).logits, want)
        torch.save(model, tmp_path / "model.pt")
        loaded = torch.load(tmp_path / "model.pt", weights_only=False)
        assert torch.equal(loaded(ids).logits, want)
    if supported(torch.bfloat16):  # cast after packing: repacked in the new dtype, not left stale
        twin.to(torch.bfloat16)
        with torch.inference_mode():
            got = twin(ids).logits.float()
        assert got.dtype == torch.float32 and (got - want).abs().max() < 0.5
        assert packed_weight(twin.lm_head.weight).packed.dtype == torch.bfloat16


def test_subclasses_of_linear_keep_their_own_forward():
    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = torch.nn.Sequential(Scaled(8, 8), torch.nn.Linear(8, 8))
    assert prepack_linears(model) == 1 and type(model[0]) is Scaled


def test_a_model_built_under_inference_mode_prepacks():
    # its weights are inference tensors, which keep no version counter to watch for changes
    with torch.inference_mode():
        model = tiny_llama(1, seed=5)
        ids = torch.randint(0, 60, (1, 5))
        want = model(ids).logits
        prepack_linears(model)
        torch.testing.assert_close(model(ids).logits, want, atol=1e-5, rtol=1e-5)
