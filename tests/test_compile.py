"""torch.compile of the neighborhood-attention models: one graph, same outputs and gradients as eager.

Compiling is slow on the CI machine, so this is one tiny NAT/DiNAT configuration that still covers the multi-head
layout, a dilated level and the small-input padding branch (levels 3 and 4 are smaller than the window at 32 px).
"""
import timm
import torch

import hiervit  # noqa: F401  (registers the models with timm)


def test_nat_compile_matches_eager_forward_backward():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = timm.create_model(
        'nat_mini', embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2), kernel_size=3,
        dilations=((1,), (2,), (1,), (1,)), num_classes=10, drop_path_rate=0.)
    x = torch.randn(2, 3, 32, 32)

    def step(fn):
        model.zero_grad()
        out = fn(x)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out_eager, grads_eager = step(model)
    # fullgraph: a graph break inside the model (an import in the op's backend selection did it) splits the blocks
    # into frames whose recompiles turn dynamic. The gradients catch fake kernels whose strides differ from the op's.
    out_compiled, grads_compiled = step(torch.compile(model, fullgraph=True))
    torch._dynamo.reset()

    torch.testing.assert_close(out_compiled, out_eager, rtol=1e-4, atol=1e-5)
    assert grads_compiled.keys() == grads_eager.keys()
    grad_scale = max(g.abs().max().item() for g in grads_eager.values())
    for name, g in grads_eager.items():
        # Relative to the largest gradient: some biases (before a norm) have exactly-zero gradients up to rounding.
        torch.testing.assert_close(grads_compiled[name], g, rtol=1e-4, atol=1e-5 * grad_scale, msg=name)
    assert any(g.abs().max() > 0 for n, g in grads_eager.items() if n.endswith('attn.rpb')), 'rpb got no gradient'
