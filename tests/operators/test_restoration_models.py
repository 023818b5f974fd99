"""Restoration models (issue 12): networks, noise schedules, samplers, degradations, metrics, the Restorer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffraflow.operators.restoration._diffusion import (
    FrameNoise,
    NoiseSchedule,
    sample,
    sampling_times,
)
from diffraflow.operators.restoration._restorer import Restorer, resample, working_shape
from diffraflow.operators.restoration._unet import (
    ConditionalUNet,
    PatternAutoencoder,
    RadonBranch,
    radon_matrices,
)
from diffraflow.operators.restoration.degradation import Degradation, smooth_humps, unit_range
from diffraflow.operators.restoration.metrics import psnr, ssim, standardised
from diffraflow.operators.restoration.models import samplers_of_record
from diffraflow.schemas.errors import InputFileError, PipelineError


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The test networks are tiny: one thread is fastest, and spare threads spin-wait on a busy CI runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- networks --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(60, 60), (61, 47), (9, 13)])
@pytest.mark.parametrize("patch", [1, 2])
def test_the_unet_keeps_any_frame_shape(shape, patch):
    torch.manual_seed(0)
    net = ConditionalUNet(2, channels=(4, 8, 8), patch=patch, radon=2)
    out = net(torch.randn(2, 2, *shape), torch.tensor([3.0, 700.0]))
    assert out.shape == (2, 1, *shape) and torch.isfinite(out).all()


def test_the_unet_is_conditioned_on_time_and_on_the_condition():
    torch.manual_seed(0)
    net = ConditionalUNet(2, channels=(4, 8)).eval()
    x = torch.randn(1, 2, 16, 16)
    a, b = net(x, torch.tensor([1.0])), net(x, torch.tensor([900.0]))
    assert not torch.allclose(a, b)
    y = x.clone()
    y[:, 1] += 1.0
    assert not torch.allclose(net(y, torch.tensor([1.0])), a)
    with pytest.raises(ValueError, match="give the diffusion time t"):
        net(x)


def test_the_radon_transform_finds_a_line_where_it_is():
    h, w = 21, 31
    frame = np.zeros((h, w), np.float32)
    frame[:, 20] = 1.0  # a vertical line at u = 20 - 15 = 5 px right of the centre
    fwd, bwd, (n_angles, n_rho) = radon_matrices((h, w), 36)
    sino = (fwd @ torch.from_numpy(frame.reshape(-1, 1))).reshape(n_angles, n_rho)
    angle, rho = np.unravel_index(int(sino.argmax()), sino.shape)
    assert angle == 0 and rho - n_rho // 2 == 5 and float(sino.max()) == pytest.approx(1.0, abs=1e-5)
    back = (bwd @ sino.reshape(-1, 1)).reshape(h, w)
    assert int(back.sum(dim=0).argmax()) == 20  # the back-projection paints the line where it was


def test_the_radon_branch_is_periodic_in_angle_and_trainable():
    torch.manual_seed(0)
    branch = RadonBranch(n_angles=8, channels=4, out_channels=2)
    x = torch.randn(2, 1, 12, 12, requires_grad=True)
    branch(x).square().mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in branch.parameters())
    s = torch.arange(2 * 5, dtype=torch.float32).reshape(1, 1, 2, 5)
    wrapped = RadonBranch._wrap(s, 1)
    assert wrapped[0, 0, 0, 1:-1].tolist() == [9.0, 8.0, 7.0, 6.0, 5.0]  # the last angle, rho reversed
    assert wrapped[0, 0, -1, 1:-1].tolist() == [4.0, 3.0, 2.0, 1.0, 0.0]


def test_the_autoencoder_shrinks_by_its_factor_and_decodes_back():
    ae = PatternAutoencoder(channels=(4, 4), latent_channels=3)
    z = ae.encode(torch.zeros(2, 1, 61, 59))
    assert z.shape == (2, 3, 16, 15) and ae.latent_shape((61, 59)) == (16, 15)
    assert ae.decode(z, (61, 59)).shape == (2, 1, 61, 59)


# -- diffusion --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedules_go_from_clean_to_pure_noise(kind):
    s = NoiseSchedule(kind, 1000)
    abar = s.alphas_cumprod
    assert abar[0] > 0.999 and abar[-1] < 1e-3 and np.all(np.diff(abar) < 0)
    if kind == "linear":
        assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    short = NoiseSchedule(kind, 50)
    assert short.alphas_cumprod[-1] < 1e-3  # a short chain also ends in noise


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_targets_and_their_inverse_agree(prediction):
    s = NoiseSchedule("cosine", 100)
    torch.manual_seed(1)
    x0, eps = torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5)
    t = torch.tensor([0, 10, 50, 98])
    x_t = s.q_sample(x0, t, eps)
    x0_hat, eps_hat = s.split(s.target(x0, eps, t, prediction), x_t, t, prediction)
    assert torch.allclose(x0_hat, x0, atol=1e-3) and torch.allclose(eps_hat, eps, atol=1e-3)


def oracle(schedule: NoiseSchedule, x0: torch.Tensor, prediction: str):
    """A perfect denoiser of one known pattern (its prediction from x_t and t)."""
    def model(x_t, t):
        a = schedule._abar(t, x_t)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return schedule.target(x0, eps, t.long(), prediction)
    return model


@pytest.mark.parametrize("sampler,steps", [("direct", None), ("ddim", 4), ("ddim", 50), ("ddpm", 20), ("ddpm", None)])
def test_every_sampler_lands_on_the_pattern_a_perfect_model_knows(sampler, steps):
    s = NoiseSchedule("linear", 200)
    x0 = torch.linspace(-1, 1, 3 * 16).reshape(3, 1, 4, 4)
    out = sample(oracle(s, x0, "v"), s, "v", FrameNoise(7, [0, 1, 2], (1, 4, 4)), sampler, steps)
    assert torch.allclose(out, x0, atol=1e-3)


def test_sampling_times_and_noise_do_not_depend_on_the_batch():
    assert sampling_times(1000, 1) == [999] and sampling_times(5, 10) == [4, 3, 2, 1, 0]
    whole = FrameNoise(3, [10, 11, 12], (1, 2, 2))
    first, second = whole.draw(), whole.draw()
    part = FrameNoise(3, [12], (1, 2, 2))
    assert torch.equal(part.draw()[0], first[2]) and torch.equal(part.draw()[0], second[2])
    assert not torch.equal(first[0], first[1])


# -- degradations and metrics ---------------------------------------------------------------------------

def test_degradations_have_the_asked_dose_and_are_reproducible():
    clean = np.random.default_rng(0).random((200, 24, 24)).astype(np.float32)
    noisy, info = Degradation(dose=(2.0, 2.0), read_noise=(0.0, 0.0)).apply(clean, np.random.default_rng(1))
    assert noisy.dtype == np.float32 and np.all(noisy == np.rint(noisy)) and noisy.min() >= 0
    assert noisy.mean() == pytest.approx(2.0, rel=0.02) and np.all(info["dose"] == 2.0)
    again, _ = Degradation(dose=(2.0, 2.0), read_noise=(0.0, 0.0)).apply(clean, np.random.default_rng(1))
    assert np.array_equal(noisy, again)
    ladder, info = Degradation(dose=(0.5, 32.0)).apply(clean, np.random.default_rng(2))
    assert 0.5 <= info["dose"].min() and info["dose"].max() <= 32.0
    assert np.median(info["dose"]) == pytest.approx(4.0, rel=0.3)  # log-uniform: the geometric middle
    assert unit_range(np.full((1, 2, 2), 3.0)).tolist() == [[[0.0, 0.0], [0.0, 0.0]]]
    humps = smooth_humps(5, (10, 10), np.random.default_rng(0))
    assert humps.shape == (5, 10, 10) and humps.max() <= 1.0


@pytest.mark.parametrize("record,message", [
    ({"dose": [0, 2]}, "params.degradation.dose: must be positive"),
    ({"gain": [0, 2]}, "params.degradation.gain: depth 2.0 exceeds 1"),
    ({"dose": "low"}, "params.degradation.dose: must be two numbers [low, high], got 'low'"),
    ({"background": [-1, 1]}, "params.degradation.background: range [-1.0, 1.0] goes below 0"),
])
def test_bad_degradation_ranges_are_one_line_errors(record, message):
    with pytest.raises(PipelineError) as exc:
        Degradation.from_record(record, "params.degradation")
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_psnr_and_ssim_agree_with_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    clean = rng.random((3, 40, 40))
    restored = 5 * (clean + 0.3 * rng.standard_normal((3, 40, 40))) + 7  # another scale and offset
    c, r = standardised(clean), standardised(restored)
    for i in range(3):
        span = float(np.ptp(c[i]))
        assert psnr(restored, clean)[i] == pytest.approx(peak_signal_noise_ratio(c[i], r[i], data_range=span))
        expected = structural_similarity(c[i], r[i], data_range=span, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
        assert ssim(restored, clean)[i] == pytest.approx(expected, abs=2e-3)


# -- the Restorer --------------------------------------------------------------------------------------

def test_frames_far_from_the_training_scale_are_restored_at_it():
    assert working_shape((60, 60), (60, 60)) == (60, 60)
    assert working_shape((70, 74), (60, 60)) == (70, 74)  # within a quarter: as they are
    assert working_shape((120, 160), (60, 60)) == (60, 80)
    assert working_shape((30, 30), (60, 60)) == (60, 60)
    assert resample(torch.ones(1, 1, 8, 6), (4, 3)).shape == (1, 1, 4, 3)
    record = {"restorer": "supervised", "channels": [4, 8], "frame_shape": [20, 20]}
    big = Restorer.untrained(record).restore(np.random.default_rng(0).poisson(3, (2, 40, 44)))
    assert big.shape == (2, 40, 44)
    assert torch.allclose(big.mean(dim=(1, 2)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(big.std(dim=(1, 2), unbiased=False), torch.ones(2), atol=1e-3)


def test_a_frame_restores_the_same_in_any_batch():
    record = {"restorer": "diffusion", "channels": [4, 8], "frame_shape": [16, 16], "prediction": "v",
              "schedule": {"kind": "cosine", "timesteps": 20}}
    torch.manual_seed(0)
    r = Restorer.untrained(record)
    frames = np.random.default_rng(0).poisson(2, (5, 16, 16)).astype("uint8")
    for sampler in ("direct", "ddim", "ddpm"):
        whole = r.restore(frames, sampler, steps=3, seed=4, indices=[10, 11, 12, 13, 14], batch=5)
        split = torch.cat([r.restore(frames[:2], sampler, steps=3, seed=4, indices=[10, 11], batch=1),
                           r.restore(frames[2:], sampler, steps=3, seed=4, indices=[12, 13, 14], batch=2)])
        assert torch.allclose(whole, split, atol=1e-5), sampler
    other_seed = r.restore(frames, "ddpm", steps=3, seed=5, indices=[10, 11, 12, 13, 14])
    assert not torch.allclose(other_seed, r.restore(frames, "ddpm", steps=3, seed=4, indices=[10, 11, 12, 13, 14]))


def test_samplers_a_model_offers_and_refuses():
    assert samplers_of_record({"restorer": "supervised"}) == ("direct",)
    assert samplers_of_record({"restorer": "latent_diffusion", "prediction": "v"}) == ("direct", "ddim", "ddpm")
    r = Restorer.untrained({"restorer": "supervised", "channels": [4], "frame_shape": [8, 8]})
    assert r.check_sampler("auto", "s") == "direct"
    with pytest.raises(PipelineError, match="a supervised model .* cannot sample with 'ddpm' .fix: use sampler: direct"):
        r.check_sampler("ddpm", "sampler")
    with pytest.raises(InputFileError, match="unknown restorer 'gan'"):
        Restorer.untrained({"restorer": "gan", "channels": [4]})


def test_a_latent_restorer_restores_through_its_decoder():
    record = {"restorer": "latent_diffusion", "channels": [8, 8], "frame_shape": [24, 24], "prediction": "v",
              "schedule": {"kind": "linear", "timesteps": 10},
              "autoencoder": {"autoencoder_channels": [4, 4], "latent_channels": 2, "latent_std": 2.0}}
    torch.manual_seed(0)
    r = Restorer.untrained(record)
    out = r.restore(np.random.default_rng(1).poisson(2, (3, 24, 24)), "ddim", steps=2)
    assert out.shape == (3, 24, 24) and torch.isfinite(out).all()
    assert r.net.stem.in_channels == 2 + 16  # the latent and the condition folded 4 x 4 into channels
    assert not math.isnan(float(out.std()))
