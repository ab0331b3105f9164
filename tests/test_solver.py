"""revpers_core.solver on its own (no ComfyUI): the schedule, the timesteps, the SDE-DPM-Solver++(2M)
step against the reference's recorded numbers, and the edit-friendly inversion's exactness."""
import json

import numpy as np
import pytest
import torch

from oracle_model import golden, oracle_dir
from revpers_core import solver
from revpers_core import solver
from revpers_core.solver import NoiseSchedule, inversion_timesteps

CASES = ("default", "attribute", "reconstruction")


@pytest.fixture(scope="module")
def sdxl_schedule():
    return NoiseSchedule.from_betas("scaled_linear", 0.00085, 0.012, 1000)


def test_schedule_matches_reference_alphas(sdxl_schedule):
    manifest = json.loads((oracle_dir() / "manifest.json").read_text())
    got = [float(sdxl_schedule.alphas_cumprod[t]) for t in manifest["timesteps"]]
    assert got == manifest["alphas_cumprod_at_timesteps"]  # float32 values, compared exactly


def test_timesteps_match_reference():
    g = golden()
    assert torch.equal(inversion_timesteps(10, 0.7), g["default/timesteps"])
    ts = inversion_timesteps(100, 0.7)
    assert ts[0] == 299 and ts[-1] == 1 and len(ts) == 100 and bool(torch.all(ts[1:] < ts[:-1]))


def test_timesteps_ignore_ui_float_noise():
    # ComfyUI's float widgets deliver 0.7 as 0.7000000000000001 (70 * 0.01); the first timestep must
    # still be the reference's 299, not 298.
    assert 0.7000000000000001 != 0.7
    noisy = inversion_timesteps(10, 0.7000000000000001)
    assert noisy.tolist() == inversion_timesteps(10, 0.7).tolist()
    assert int(noisy[0]) == 299


@pytest.mark.parametrize("steps,skip,match", [
    (1, 0.7, "at least 2"), (0, 0.7, "at least 2"), (10, 0.0, "strictly between 0 and 1"),
    (10, 1.0, "strictly between 0 and 1"), (10, -0.2, "strictly between"), (100, 0.99, "repeating a timestep"),
])
def test_timesteps_reject_bad_settings(steps, skip, match):
    with pytest.raises(ValueError, match=match):
        inversion_timesteps(steps, skip)


def test_the_bounds_of_steps_skip_and_seed_are_checked_in_one_place():
    """solver's constants are the bounds the widgets and the CLI use; each check says them."""
    assert (solver.check_steps(solver.MIN_STEPS), solver.check_steps(float(solver.MAX_STEPS))) == (2, 1000)
    for bad, match in ((solver.MIN_STEPS - 1, "at least 2"), (solver.MAX_STEPS + 1, "at most 1000"),
                       (2.5, "whole number")):
        with pytest.raises(ValueError, match=match):
            solver.check_steps(bad)
    assert solver.check_skip(0.7000000000000001) == 0.7
    assert solver.check_skip(0.9900000000000001) == solver.SKIP_MAX  # UI float noise at the bound
    for bad in (0.0, 0.005, 0.995, 1.0):
        with pytest.raises(ValueError, match="skip must lie strictly between 0 and 1, from 0.01 to 0.99"):
            solver.check_skip(bad)
    assert solver.check_seed(solver.MAX_SEED) == 2 ** 64 - 1
    for bad in (-1, solver.MAX_SEED + 1, 0.5):
        with pytest.raises(ValueError, match="seed must be a whole number from 0 to"):
            solver.check_seed(bad)


def _eps_denoiser(schedule, timesteps, eps):
    """The data prediction m = (x − σ_s ε)/α_s from the reference's recorded guided ε of each step."""
    ts = [int(t) for t in timesteps]
    return lambda x, j: (x - schedule.sigma[ts[j]] * eps[j:j + 1]) / schedule.alpha[ts[j]]


@pytest.mark.parametrize("case", CASES)
def test_replay_of_reference_predictions(case, sdxl_schedule):
    """Fed the reference's own per-step predictions, the solver reproduces its noisy latents bit for bit and
    its noise maps / final latents to float32 rounding. The residual comes from the reference's float32 λ
    table, which differs from this machine's torch by one ulp at a few timesteps (libm)."""
    g = golden()
    ts = inversion_timesteps(10, 0.7)
    record = solver.invert(g[f"{case}/x0"], _eps_denoiser(sdxl_schedule, ts, g[f"{case}/inversion/step_noise_pred_guided"]),
                           sdxl_schedule, ts, seed=0)
    assert torch.equal(record.x_T, g[f"{case}/init_latents"])
    assert record.step_orders == g[f"{case}/inversion/step_order"].tolist()
    zs_ref = g[f"{case}/inversion/zs"]
    zs_err = (record.noise_maps[:, 0] - zs_ref).abs().max().item()
    assert zs_err <= 1e-6 * zs_ref.abs().max().item(), zs_err  # |z| reaches ~68 at t=34
    stale = g[f"{case}/inversion/stale_model_outputs"][1:2]
    assert (record.last_data_prediction - stale).abs().max().item() < 1e-6

    final = solver.sample(record, _eps_denoiser(sdxl_schedule, ts, g[f"{case}/generation/noise_pred_guided"]),
                          reference_compat=True)
    final_err = (final - g[f"{case}/final_latents"]).abs().max().item()
    print(f"\n[solver replay {case}] zs max-abs {zs_err:.3g} (max |z| {zs_ref.abs().max():.1f}), final {final_err:.3g}")
    assert final_err < 5e-6
    assert solver.generation_step_orders(10, True) == g[f"{case}/generation/step_order"].tolist()


def test_noise_draws_follow_the_reference_order(sdxl_schedule):
    """Noise is drawn per face from a CPU generator seeded with the seed, for t ascending: x_T is the last draw."""
    g = golden()
    x0 = g["default/x0"]
    draws = g["default/inversion/add_noise_noise"]  # draw order, t ascending
    assert g["default/inversion/add_noise_t"].tolist() == sorted(g["default/timesteps"].tolist())
    assert torch.equal(sdxl_schedule.add_noise(x0, draws[-1:], 299), g["default/init_latents"])
    raw = g["default/inversion/xts_raw"]
    for k, t in enumerate(g["default/inversion/add_noise_t"].tolist()):
        # bit for bit except where this machine's float32 √ᾱ differs from the reference's by one ulp (t=100)
        assert (sdxl_schedule.add_noise(x0, draws[k:k + 1], t)[0] - raw[k + 1]).abs().max().item() <= 2.4e-7
    # and the solver draws exactly these, in this order, from a generator seeded with the seed
    g0 = torch.Generator().manual_seed(0)
    assert torch.equal(solver._draw_noise([g0], x0), draws[:1])


def _toy_denoiser(schedule, timesteps, weight):
    """A fixed nonlinear data prediction (any function of x and t will do for exactness)."""
    ts = [int(t) for t in timesteps]
    return lambda x, j: torch.tanh(weight * x + 0.01 * ts[j]) * (0.2 + ts[j] / 200)


def _toy_guided_denoiser(schedule, timesteps, guidance):
    """m = m_u + g (m_c − m_u) of two fixed nonlinear branches: negative guidance amplifies like the method's."""
    cond, uncond = _toy_denoiser(schedule, timesteps, 1.3), _toy_denoiser(schedule, timesteps, -0.6)
    return lambda x, j: uncond(x, j) + guidance * (cond(x, j) - uncond(x, j))


def test_clean_mode_reconstructs_exactly_and_compat_does_not(sdxl_schedule):
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8) * 0.5
    ts = inversion_timesteps(20, 0.7)
    denoise = _toy_guided_denoiser(sdxl_schedule, ts, -10.0)
    record = solver.invert(x0, denoise, sdxl_schedule, ts, seed=3)
    clean = solver.sample(record, denoise)
    assert (clean - x0).abs().max().item() < 1e-6
    compat = solver.sample(record, denoise, reference_compat=True)
    assert (compat - x0).abs().max().item() > 1e-3  # the stale first step breaks exactness


def test_step_orders():
    assert solver.inversion_step_orders(5) == [1, 2, 2, 2, 2]
    assert solver.generation_step_orders(5, False) == [1, 2, 2, 2, 2]
    assert solver.generation_step_orders(5, True) == [2, 2, 2, 2, 1]
    assert solver.generation_step_orders(20, True) == [2] * 20


def test_batch_faces_get_their_own_draws(sdxl_schedule):
    """Face i of a batch gets exactly the noise it gets alone (same seed per face, one generator each)."""
    torch.manual_seed(1)
    x0 = torch.randn(3, 4, 8, 8)
    ts = inversion_timesteps(6, 0.7)
    denoise = _toy_denoiser(sdxl_schedule, ts, 0.7)  # row-wise, so batching cannot change the numbers
    batch = solver.invert(x0, denoise, sdxl_schedule, ts, seed=11)
    for i in range(3):
        alone = solver.invert(x0[i:i + 1], denoise, sdxl_schedule, ts, seed=11)
        assert torch.equal(alone.x_T[0], batch.x_T[i])
        assert torch.equal(alone.noise_maps[:, 0], batch.noise_maps[:, i])
        face = batch.face(i)
        assert torch.equal(solver.sample(face, denoise), solver.sample(alone, denoise))


def test_seed_determinism(sdxl_schedule):
    x0 = torch.linspace(-1, 1, 256).reshape(1, 4, 8, 8)
    ts = inversion_timesteps(5, 0.7)
    denoise = _toy_denoiser(sdxl_schedule, ts, 0.9)
    a = solver.invert(x0, denoise, sdxl_schedule, ts, seed=5)
    b = solver.invert(x0, denoise, sdxl_schedule, ts, seed=5)
    c = solver.invert(x0, denoise, sdxl_schedule, ts, seed=6)
    assert torch.equal(a.noise_maps, b.noise_maps) and torch.equal(a.x_T, b.x_T)
    assert not torch.equal(a.noise_maps, c.noise_maps)


def test_schedule_rejects_degenerate_alphas():
    with pytest.raises(ValueError):
        NoiseSchedule(torch.tensor([0.9, 0.5, 0.0]))
    with pytest.raises(ValueError, match="unknown beta schedule"):
        NoiseSchedule.from_betas("cosine", 0.1, 0.2)


def test_on_step_reports_every_step(sdxl_schedule):
    seen = []
    x0 = torch.zeros(1, 4, 4, 4)
    ts = inversion_timesteps(4, 0.5)
    record = solver.invert(x0, _toy_denoiser(sdxl_schedule, ts, 1.0), sdxl_schedule, ts, seed=0,
                           on_step=lambda d, n: seen.append((d, n)))
    solver.sample(record, _toy_denoiser(sdxl_schedule, ts, 1.0), on_step=lambda d, n: seen.append((d, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)] * 2
    assert np.isfinite(record.noise_maps.numpy()).all()
