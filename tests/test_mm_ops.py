"""hiervit.mm.tv_ops: mmcv's op wrappers on the torchvision stand-in agree with torchvision (and a reference)."""
import pytest
import torch

pytest.importorskip('mmcv', reason='needs the OpenMMLab extras: pip install "hiervit[det,seg]"')
pytest.importorskip('mmdet', reason='needs the OpenMMLab extras: pip install "hiervit[det,seg]"')

from hiervit.mm.tv_ops import install_tv_ops, tv_ops_installed  # noqa: E402

if not install_tv_ops():
    pytest.skip('a compiled mmcv extension is installed; the torchvision stand-in is not in use',
                allow_module_level=True)

import torchvision.ops as tvo  # noqa: E402
from mmcv.ops import RoIAlign, RoIPool, batched_nms, nms  # noqa: E402

pytestmark = pytest.mark.mm


def _boxes(n: int, size: float = 60.) -> torch.Tensor:
    xy = torch.rand(n, 2) * size
    wh = torch.rand(n, 2) * size / 2 + 1
    return torch.cat([xy, xy + wh], 1)


def _nms_reference(boxes: torch.Tensor, scores: torch.Tensor, thr: float, offset: int) -> torch.Tensor:
    """Greedy NMS written out, with mmcv's `offset` (+1 box-size) convention."""
    order = scores.argsort(descending=True).tolist()
    keep = []
    area = (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1] + offset)
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            w = (torch.min(boxes[i, 2], boxes[j, 2]) - torch.max(boxes[i, 0], boxes[j, 0]) + offset).clamp(min=0)
            h = (torch.min(boxes[i, 3], boxes[j, 3]) - torch.max(boxes[i, 1], boxes[j, 1]) + offset).clamp(min=0)
            inter = w * h
            if inter / (area[i] + area[j] - inter) <= thr:
                rest.append(j)
        order = rest
    return torch.tensor(keep, dtype=torch.long)


def test_installed_as_mmcv_ext():
    import mmcv
    assert tv_ops_installed() and mmcv._ext.__name__ == 'mmcv._ext'
    assert install_tv_ops() is True  # idempotent


@pytest.mark.parametrize('thr', [0.3, 0.7])
def test_nms_matches_torchvision(thr):
    boxes, scores = _boxes(80), torch.rand(80)
    _, keep = nms(boxes, scores, thr)
    torch.testing.assert_close(keep, tvo.nms(boxes, scores, thr))


@pytest.mark.parametrize('offset', [0, 1])
def test_nms_offset_matches_reference(offset):
    # integer-ish small boxes: the +1 convention changes which boxes overlap
    boxes, scores = (_boxes(40, 12.) * 2).round() / 2, torch.rand(40)
    _, keep = nms(boxes, scores, 0.4, offset=offset)
    torch.testing.assert_close(keep, _nms_reference(boxes, scores, 0.4, offset))


def test_batched_nms_matches_torchvision():
    boxes, scores, labels = _boxes(120), torch.rand(120), torch.randint(0, 5, (120,))
    dets, keep = batched_nms(boxes, scores, labels, dict(type='nms', iou_threshold=0.5))
    expected = tvo.batched_nms(boxes, scores, labels, 0.5)
    assert sorted(keep.tolist()) == sorted(expected.tolist())
    torch.testing.assert_close(dets[:, 4], scores[keep])


@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('sampling_ratio', [0, 2])
def test_roi_align_matches_torchvision(aligned, sampling_ratio):
    # odd, non-square map; boxes cross the borders; two images
    feat = torch.randn(2, 3, 13, 19, dtype=torch.float64, requires_grad=True)
    b = _boxes(9, 70.) - 8
    rois = torch.cat([torch.randint(0, 2, (9, 1)).double(), b.double()], 1)
    op = RoIAlign((5, 3), spatial_scale=0.25, sampling_ratio=sampling_ratio, aligned=aligned)
    out = op(feat, rois)
    ref = tvo.roi_align(feat, rois, (5, 3), 0.25, sampling_ratio, aligned)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, feat, g)
    (grad_ref,) = torch.autograd.grad(ref, feat, g)
    torch.testing.assert_close(grad, grad_ref)
    assert grad.abs().sum() > 0


def test_roi_pool_matches_torchvision():
    feat = torch.randn(2, 4, 11, 17, dtype=torch.float64, requires_grad=True)
    rois = torch.cat([torch.tensor([[0.], [1.], [1.], [0.]]), _boxes(4, 40.).double()], 1).double()
    out = RoIPool((3, 4), spatial_scale=0.5)(feat, rois)
    ref = tvo.roi_pool(feat, rois, (3, 4), 0.5)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, feat, g)[0], torch.autograd.grad(ref, feat, g)[0])


def test_unprovided_ops_fail_loudly():
    from mmcv.ops import sigmoid_focal_loss
    with pytest.raises(NotImplementedError, match='sigmoid_focal_loss'):
        sigmoid_focal_loss(torch.randn(4, 3), torch.randint(0, 3, (4,)), 2.0, 0.25)
    with pytest.raises(NotImplementedError, match="pool_mode='max'"):
        RoIAlign(2, pool_mode='max')(torch.randn(1, 1, 8, 8), torch.tensor([[0., 1., 1., 5., 5.]]))
