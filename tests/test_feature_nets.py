"""FID InceptionV3 and FVD I3D: shapes, batching, strict weight loading, Inception Score.

Random weights only (nothing is downloaded): He-initialised convolutions and random BatchNorm
statistics, so the outputs depend on the input and on every tensor a loader must restore.
"""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from models.feature_weights import FeatureNetError, frames_to_input
from models.i3d import InceptionI3d, MaxPool3dSame, i3d_features, load_i3d, pad_same
from models.inception import (
    FIDInceptionV3,
    inception_features,
    inception_outputs,
    inception_score,
    load_fid_inception,
)


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """He-initialised convolutions (the default init fades the input out over ~50 layers)
    and random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm3d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.1)
    return model.eval()


def save(state: dict[str, torch.Tensor], path) -> str:
    """Write `state` as .safetensors or as a torch .pt/.pth, by the path's suffix."""
    state = {k: v.detach().contiguous() for k, v in state.items()}
    if str(path).endswith(".safetensors"):
        save_file(state, path)
    else:
        torch.save(state, path)
    return str(path)


@pytest.fixture(scope="module")
def inception() -> FIDInceptionV3:
    return randomised(FIDInceptionV3(), seed=0)


@pytest.fixture(scope="module")
def i3d() -> InceptionI3d:
    return randomised(InceptionI3d(), seed=1)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(2, 48, 40, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def videos() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(2, 9, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def inception_reference(inception, frames) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        return inception(frames)


@pytest.fixture(scope="module")
def i3d_reference(i3d, videos) -> torch.Tensor:
    with torch.inference_mode():
        return i3d(videos)


NETS = {  # net: (model fixture, loader, input fixture, reference output fixture)
    "inception": ("inception", load_fid_inception, "frames", "inception_reference"),
    "i3d": ("i3d", load_i3d, "videos", "i3d_reference"),
}


def as_tuple(outputs) -> tuple:
    return outputs if isinstance(outputs, tuple) else (outputs,)


@pytest.mark.parametrize(
    "model, tensors, parameters, shapes",
    [
        (
            FIDInceptionV3,
            472,  # 94 conv + batch-norm units x 5 tensors + fc weight and bias
            23_850_960,  # torchvision Inception3 without AuxLogits, 1008 classes
            {
                "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
                "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
                "Mixed_7c.branch_pool.bn.running_var": (192,),
                "fc.weight": (1008, 2048),
            },
        ),
        (
            InceptionI3d,
            287,  # 57 conv + batch-norm units x 5 tensors + logits weight and bias
            12_697_264,  # piergiaj/pytorch-i3d InceptionI3d, 400 classes
            {
                "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
                "Conv3d_1a_7x7.bn.running_mean": (64,),
                "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
                "Mixed_5c.b3b.conv3d.weight": (128, 832, 1, 1, 1),
                "logits.conv3d.bias": (400,),
            },
        ),
    ],
)
def test_layout_matches_the_published_checkpoints(model, tensors, parameters, shapes):
    state = {k: v for k, v in model().state_dict().items() if "num_batches_tracked" not in k}
    assert len(state) == tensors
    assert sum(v.numel() for k, v in state.items() if "running" not in k) == parameters
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key


def test_inception_output_shapes_and_batching(inception, frames, inception_reference):
    features, logits = inception_reference
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert features.abs().sum() > 0 and not torch.allclose(features[0], features[1])
    batched_features, batched_logits = inception_outputs(inception, frames, batch_size=1)
    assert batched_features.dtype == np.float64 and batched_logits.dtype == np.float64
    np.testing.assert_allclose(batched_features, features.double(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batched_logits, logits.double(), rtol=1e-4, atol=1e-5)
    one = inception_features(inception, torch.from_numpy(frames[1:]))
    np.testing.assert_allclose(one, features[1:].double(), rtol=1e-4, atol=1e-5)


def test_i3d_output_shape_and_batching(i3d, videos, i3d_reference):
    assert i3d_reference.shape == (2, 400)
    assert not torch.allclose(i3d_reference[0], i3d_reference[1])
    single_frames = videos[:, :1]  # T = 1 (an image as a clip) must work too
    with torch.inference_mode():
        together = i3d(single_frames)
    one_by_one = i3d_features(i3d, single_frames, batch_size=1)
    assert one_by_one.shape == (2, 400) and one_by_one.dtype == np.float64
    np.testing.assert_allclose(one_by_one, together.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("net", ["inception", "i3d"])
@pytest.mark.parametrize("layout", ["model.safetensors", "model.pt", "nested.pth"])
def test_saved_weights_reload_exactly(net, layout, request, tmp_path):
    original, loader, _, _ = NETS[net]
    state = request.getfixturevalue(original).state_dict()
    path = tmp_path / layout
    if layout == "nested.pth":  # like published ports: no num_batches_tracked; or wrapped
        written = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        torch.save({"state_dict": written, "epoch": 3}, path)
    else:
        save(state, path)
    loaded = loader(path)
    assert not loaded.training
    for key, value in loaded.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("net", ["inception", "i3d"])
def test_reloaded_net_gives_identical_outputs(net, request, tmp_path):
    original, loader, inputs, reference = NETS[net]
    loaded = loader(
        save(request.getfixturevalue(original).state_dict(), tmp_path / "w.safetensors")
    )
    with torch.inference_mode():
        got = as_tuple(loaded(request.getfixturevalue(inputs)))
    for actual, expected in zip(got, as_tuple(request.getfixturevalue(reference)), strict=True):
        torch.testing.assert_close(actual, expected)


def test_state_dict_of_the_other_network_is_rejected(inception, i3d, tmp_path):
    i3d_file = save(i3d.state_dict(), tmp_path / "i3d.safetensors")
    with pytest.raises(FeatureNetError) as raised:
        load_fid_inception(i3d_file)
    message = str(raised.value)
    for part in (i3d_file, "FID InceptionV3", "missing keys", "Conv2d_1a_3x3", "Conv3d_1a_7x7"):
        assert part in message
    inception_file = save(inception.state_dict(), tmp_path / "inception.pt")
    with pytest.raises(FeatureNetError, match="I3D") as raised:
        load_i3d(inception_file)
    assert inception_file in str(raised.value) and "unexpected keys" in str(raised.value)


@pytest.mark.parametrize(
    "net, key, shape",
    [
        ("inception", "fc.weight", (1000, 2048)),  # torchvision's ImageNet head, not the FID one
        ("i3d", "logits.conv3d.weight", (157, 1024, 1, 1, 1)),  # a Charades head
    ],
)
def test_tensor_of_wrong_shape_is_rejected(net, key, shape, request, tmp_path):
    original, loader, _, _ = NETS[net]
    state = dict(request.getfixturevalue(original).state_dict())
    expected = tuple(state[key].shape)
    state[key] = torch.zeros(shape)
    path = save(state, tmp_path / "weights.safetensors")
    with pytest.raises(FeatureNetError) as raised:
        loader(path)
    assert path in str(raised.value)
    assert f"{key}: file {shape} vs expected {expected}" in str(raised.value)


@pytest.mark.parametrize("loader", [load_fid_inception, load_i3d])
@pytest.mark.parametrize("name", ["absent.pt", "notes.txt", "fake.safetensors", "config.pt"])
def test_missing_or_foreign_file_is_rejected(loader, name, tmp_path):
    path = tmp_path / name
    if name == "config.pt":
        torch.save({"lr": 0.1, "steps": [1, 2]}, path)
    elif name != "absent.pt":
        path.write_text("these are not weights\n")
    with pytest.raises(FeatureNetError, match=re.escape(str(path))):
        loader(path)


def test_frames_to_input_scales_orders_channels_and_resizes_bilinearly():
    frame = np.zeros((1, 1, 2, 3), dtype=np.uint8)
    frame[0, 0, :, 0] = 255  # red everywhere
    frame[0, 0, 1, 1] = 255  # green on the right pixel only
    x = frames_to_input(frame, size=4, ndim=4, device=torch.device("cpu"))
    assert x.shape == (1, 3, 4, 4)
    torch.testing.assert_close(x[0, 0], torch.ones(4, 4))
    torch.testing.assert_close(x[0, 2], -torch.ones(4, 4))
    # align_corners=False samples at -0.25, 0.25, 0.75, 1.25 source pixels (edges clamped)
    torch.testing.assert_close(x[0, 1, 0], torch.tensor([-1.0, -0.5, 0.5, 1.0]))


def test_i3d_same_padding_matches_tensorflow():
    # TF 'SAME': output ceil(size / stride), padding split with the extra pixel at the end
    x = torch.randn(1, 1, 9, 224, 5)
    padded = pad_same(x, kernel=(7, 7, 2), stride=(2, 2, 2))
    torch.testing.assert_close(padded, F.pad(x, [0, 1, 2, 3, 3, 3]))
    pooled = MaxPool3dSame((3, 3, 3), (2, 2, 2))(-torch.ones(1, 1, 5, 6, 7))
    assert pooled.shape == (1, 1, 3, 3, 4)
    torch.testing.assert_close(pooled, -torch.ones_like(pooled))  # padding never wins the max


@pytest.mark.parametrize(
    "frames",
    [np.zeros((2, 8, 8, 3), dtype=np.float32), np.zeros((8, 8, 3), dtype=np.uint8)],
)
def test_inception_rejects_non_uint8_or_unbatched_frames(inception, frames):
    with pytest.raises(ValueError, match="uint8 frames with 4 dims"):
        inception(frames)


def test_i3d_rejects_frames_without_time_axis(i3d):
    with pytest.raises(ValueError, match="uint8 frames with 5 dims"):
        i3d(np.zeros((2, 8, 8, 3), dtype=np.uint8))


def test_inception_score():
    assert inception_score(np.zeros((20, 1008)), splits=2) == pytest.approx((1.0, 0.0))
    confident = 50.0 * np.eye(10)  # ten sure and distinct predictions
    assert inception_score(confident, splits=1) == pytest.approx((10.0, 0.0), rel=1e-6)
    assert inception_score(confident + 7.0, splits=2) == pytest.approx((5.0, 0.0), rel=1e-6)
    mean, std = inception_score(np.vstack([confident, np.zeros((10, 10))]), splits=2)
    assert mean == pytest.approx(5.5, rel=1e-6) and std == pytest.approx(4.5, rel=1e-6)
    with pytest.raises(ValueError, match="splits"):
        inception_score(confident, splits=11)
