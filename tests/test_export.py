"""The export contract, on the smallest model of every family (new families are picked up automatically).

FX (`torch.fx.symbolic_trace` and timm's FX feature extraction), TorchScript, `torch.export` with a dynamic batch and
ONNX (`torch.onnx.export(..., dynamo=True)`, run in onnxruntime) must all reproduce eager outputs; FX and export
must see each hiervit op as one `torch.ops.hiervit.*` call, whatever backend would run it. ONNX has no attention op of
ours: the exporter decomposes each op into its reference formulation (standard ONNX operators).
"""
import copy
from functools import lru_cache

import onnxruntime
import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
import pytest
import timm
import torch

from test_contract import SMALL_MODELS

H, W = 48, 80  # export/ONNX: non-square, not a multiple of BiFormer's 7 regions nor of the stride 32
SMALL = (1, 3, 32, 48)  # FX/TorchScript: their Python paths do not depend on the size
ONNX_RTOL = 1e-4  # max |onnxruntime - eager| relative to max |eager|


@lru_cache(maxsize=None)
def _model(name: str) -> torch.nn.Module:
    """One eval-mode model per family for all tests here (none of them changes it)."""
    torch.manual_seed(0)
    return timm.create_model(name).eval()


def _hiervit_calls(graph: torch.fx.Graph) -> list:
    calls = [str(n.target) for n in graph.nodes if n.op == 'call_function' and 'hiervit.' in str(n.target)]
    return [c[:-len('.default')] if c.endswith('.default') else c for c in calls]


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_fx_symbolic_trace_forward_backward(name):
    model = _model(name)
    traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    calls = _hiervit_calls(traced.graph)
    # the attention ops are single leaf calls, as many as torch.export finds (none hidden inside a leaf module)
    assert all(c.endswith('_fwd') for c in calls) and len(calls) == len(_hiervit_calls(_exported(name)[1].graph))
    x = torch.randn(*SMALL)
    out = traced(x)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x))
    out.square().mean().backward()  # the graph holds the eager ops, so matching outputs mean matching gradients
    no_grad = [n for n, p in traced.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f'parameters without a (finite) gradient: {no_grad[:5]}'


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_fx_feature_extraction_forward_backward(name):
    """timm's FX feature extraction: the level outputs (in the model's own layout), trainable end to end."""
    features = timm.create_model(name, features_only=True, feature_cls='fx').eval()
    outs = features(torch.randn(*SMALL))
    channel_axis = -1 if features.output_fmt in ('NHWC', 'NLC') else 1  # NLC: a plain ViT's block tokens
    assert [o.shape[channel_axis] for o in outs] == features.feature_info.channels()
    assert all(o.shape[0] == 1 and torch.isfinite(o).all() for o in outs)
    sum(o.square().mean() for o in outs).backward()
    no_grad = [n for n, p in features.named_parameters() if p.grad is None]
    assert not no_grad, f'parameters without a gradient: {no_grad[:5]}'


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_torchscript_matches_eager(name):
    model = _model(name)
    scripted = torch.jit.script(model)
    x = torch.randn(*SMALL)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@lru_cache(maxsize=None)
def _exported(name: str):
    model = _model(name)
    batch = torch.export.Dim('batch', min=1, max=64)
    return model, torch.export.export(model, (torch.randn(2, 3, H, W),), dynamic_shapes=({0: batch},))


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_torch_export_dynamic_batch(name):
    model, ep = _exported(name)
    assert all(c.endswith('_fwd') for c in _hiervit_calls(ep.graph)), 'the attention ops must be single calls'
    x = torch.randn(3, 3, H, W)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x))


def _onnx_matches_eager(model: torch.nn.Module, exported, size, tmp_path, **export_kwargs) -> None:
    program = torch.onnx.export(exported, dynamo=True, verbose=False, **export_kwargs)
    path = str(tmp_path / 'model.onnx')
    program.save(path)
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    for batch in (1, 3):  # the batch axis is dynamic
        x = torch.randn(batch, 3, *size)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            want = model(x)
        err = (torch.from_numpy(got) - want).abs().max() / want.abs().max()
        assert err <= ONNX_RTOL, f'batch {batch}: relative error {err:.2e}'


@pytest.mark.parametrize('name', SMALL_MODELS)
def test_onnx_runs_in_onnxruntime(name, tmp_path):
    model, ep = _exported(name)
    # optimize=False: the optimizer pass is most of the export time here and does not change what is checked
    _onnx_matches_eager(model, ep, (H, W), tmp_path, optimize=False)


def test_onnx_at_224(tmp_path):
    """One family (the first of SMALL_MODELS) at the models' own 224 x 224."""
    name = SMALL_MODELS[0]
    model = _model(name)
    ep = torch.export.export(model, (torch.randn(2, 3, 224, 224),),
                             dynamic_shapes=({0: torch.export.Dim('batch', min=1, max=64)},))
    _onnx_matches_eager(model, ep, (224, 224), tmp_path, optimize=False)
