"""genlab's noise-schedule module (genlab/noise.py) against diffusers' schedulers: same numbers?
what does each cost per sampling step beside the denoiser?

    .venv/bin/python bench/bench_schedules.py          # needs `pip install diffusers` (not a genlab dependency)

Prints (1) the largest difference in alpha-bar for the linear and cosine schedules (diffusers'
`linear` and `squaredcos_cap_v2`; diffusers indexes timesteps 0..T-1 where genlab uses 1..T), (2) the
largest difference of one DDIM step (eta = 0 and 1, same eps and noise) and of one ancestral step
(diffusers' DDPMScheduler with variance_type "fixed_large" = beta_t, genlab's choice), and (3) the
median time of one step of each beside one forward of the default ddpm UNet at batch 500, so the
scheduler's share of sampling time is visible. The decision it informs is written in the README
(diffusion section).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genlab.noise import NoiseSchedule  # noqa: E402


def _median_ms(fn, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    try:
        from diffusers import DDIMScheduler, DDPMScheduler
    except ImportError:
        sys.exit("bench_schedules needs diffusers: pip install diffusers")
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
    T = 1000
    for kind, name in (("linear", "linear"), ("cosine", "squaredcos_cap_v2")):
        ours = NoiseSchedule(kind, T)
        theirs = DDPMScheduler(num_train_timesteps=T, beta_schedule=name)
        diff = (ours.alpha_bar[1:] - theirs.alphas_cumprod.double()).abs().max().item()
        print(f"alpha-bar {kind:>6}: max |genlab - diffusers| = {diff:.2e} (diffusers keeps float32)")

    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 1, 28, 28, generator=g)
    eps = torch.randn(500, 1, 28, 28, generator=g)
    noise = torch.randn(500, 1, 28, 28, generator=g)
    ours = NoiseSchedule("linear", T)
    for eta in (0.0, 1.0):
        ddim = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False,
                             set_alpha_to_one=True, timestep_spacing="leading")
        ddim.set_timesteps(50)
        t_d = int(ddim.timesteps[10])  # diffusers' t is genlab's t + 1
        t_prev_d = t_d - T // 50
        mine = ours.ddim_step(x.double(), torch.full((500,), t_d + 1), torch.full((500,), t_prev_d + 1),
                              eps.double(), eta, noise.double(), clip=False)
        got = ddim.step(eps, t_d, x, eta=eta, variance_noise=noise).prev_sample
        print(f"DDIM step eta={eta:g}: max |genlab - diffusers| = {(mine - got.double()).abs().max().item():.2e}")
    ddpm = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", variance_type="fixed_large",
                         clip_sample=True)
    # t = 1 (diffusers' 0) adds no noise: the means must agree
    mine = ours.ddpm_step(x.double(), torch.full((500,), 1), eps.double(), noise.double(), clip=True)
    got = ddpm.step(eps, 0, x).prev_sample
    print(f"DDPM ancestral step at t=1: max |genlab - diffusers| = {(mine - got.double()).abs().max().item():.2e}")
    # t = 501: diffusers draws its own noise; (theirs - our mean) / sigma must be standard normal
    t_d = 500
    mean = ours.ddpm_step(x.double(), torch.full((500,), t_d + 1), eps.double(), torch.zeros_like(x).double())
    got = ddpm.step(eps, t_d, x, generator=torch.Generator().manual_seed(0)).prev_sample
    z = (got.double() - mean) / ours.betas[t_d + 1].sqrt()
    print(f"DDPM ancestral step at t=501: (diffusers - genlab mean) / sqrt(beta_t): mean {z.mean().item():+.4f}, "
          f"std {z.std().item():.4f} (0 and 1: the same step, variance beta_t)")

    from genlab import config as C
    from genlab.families.diffusion import build_denoiser
    from genlab.data import DataInfo

    cfg = C.resolve("ddpm", sets=["device=cpu"])
    net, _ = build_denoiser(cfg.options, DataInfo(name="mnist", kind="image", shape=(1, 28, 28), num_classes=10),
                            cfg, torch.device("cpu"), "bench")
    net.eval()
    t = torch.full((500,), 500)
    with torch.inference_mode():
        unet = _median_ms(lambda: net(x, t), repeats=5)
        ours_ms = _median_ms(lambda: ours.ddim_step(x, t, t - 20, eps, 0.0, noise))
        ddim.set_timesteps(50)
        theirs_ms = _median_ms(lambda: ddim.step(eps, 480, x, eta=0.0))
    print(f"one sampling step at batch 500 ({torch.get_num_threads()} threads): UNet forward {unet:.1f} ms, "
          f"genlab DDIM step {ours_ms:.2f} ms, diffusers DDIM step {theirs_ms:.2f} ms")


if __name__ == "__main__":
    main()
