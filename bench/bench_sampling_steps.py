"""The speed / quality trade-off of diffusion and flow-matching samplers: FID (and KID, precision,
recall) and images/s against the number of sampling steps, for trained runs.

    .venv/bin/python bench/bench_sampling_steps.py --ddpm runs/ddpm-mnist --fm runs/fm-mnist -n 2000

Rows: DDIM (eta 0) with 10, 20, 50, 100 steps and the 1,000-step ancestral DDPM chain; flow matching
with Euler 5 / 10 / 20, Heun 5 / 10 / 20 and the adaptive dopri5 solver. Every row scores n samples
(seed 0) against the same cached reference with genlab-mnist features, so FID is comparable down a
column (only at equal n). images/s is the sampling throughput alone (samples drawn in batches of
--batch-size, the EMA weights, float32), measured in the same process as the figures; NFE is the
number of denoiser evaluations per sample (Heun: 2 per step but the last; dopri5: counted).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genlab.eval.evaluate import evaluate  # noqa: E402
from genlab.runs import load_run  # noqa: E402

DDPM_ROWS = [("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddim", 100), ("ddpm", 1000)]
FM_ROWS = [("euler", 5), ("euler", 10), ("euler", 20), ("heun", 5), ("heun", 10), ("heun", 20), ("adaptive", None)]


class CountingNet(torch.nn.Module):
    """Wraps the denoiser to count evaluations (rows of a batch count once per sample)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x, *args, **kwargs):
        self.calls += 1
        return self.net(x, *args, **kwargs)


def measure(run, sampler: str, steps: int | None, n: int, batch_size: int) -> dict:
    options = {"sampler": sampler, **({"sample_steps": steps} if steps else {})}
    if sampler in ("ddim", "ddpm"):
        options["eta"] = 0.0 if sampler == "ddim" else 1.0
    family = run.family
    counter = CountingNet(family.net)
    family.net = counter
    try:
        t0 = time.perf_counter()
        with run.sampling(), torch.inference_mode():
            family.sample(batch_size, torch.Generator().manual_seed(1), **options)
        seconds = time.perf_counter() - t0
        nfe = counter.calls
        record = evaluate(run, n, "fid,kid,pr", batch_size=batch_size, seed=0, log=lambda m: None,
                          sample_options=options)
    finally:
        family.net = counter.net
    m = record["metrics"]
    return {"sampler": sampler, "steps": steps or "adaptive", "nfe": nfe, "img_s": batch_size / seconds,
            "fid": m["fid"], "kid": m["kid_mean"], "precision": m["precision"], "recall": m["recall"]}


def _rows(text: str) -> list[tuple[str, int | None]]:
    """'ddim:10,adaptive' -> [('ddim', 10), ('adaptive', None)]."""
    out = []
    for item in text.split(","):
        sampler, _, steps = item.partition(":")
        out.append((sampler, int(steps) if steps and steps != "adaptive" else None))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ddpm", type=Path, help="a trained ddpm run directory")
    p.add_argument("--fm", type=Path, help="a trained flow-matching run directory")
    p.add_argument("-n", type=int, default=2000, help="samples per row (FID is comparable only at equal n)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--ddpm-rows", type=_rows, default=DDPM_ROWS, help="sampler:steps,... (default: "
                   + ",".join(f"{a}:{b}" for a, b in DDPM_ROWS) + "); the 1,000-step chain costs 10x the 100-step row")
    p.add_argument("--fm-rows", type=_rows, default=FM_ROWS,
                   help="sampler:steps,... (default: " + ",".join(f"{a}:{b or 'adaptive'}" for a, b in FM_ROWS) + ")")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {' '.join(sys.argv)}  ({torch.get_num_threads()} threads, n = {args.n}, genlab-mnist features)")
    print("| model | sampler | steps | NFE | images/s | FID | KID | precision | recall |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for path, rows in ((args.ddpm, args.ddpm_rows), (args.fm, args.fm_rows)):
        if path is None:
            continue
        run = load_run(path, "last", "cpu")
        for sampler, steps in rows:
            r = measure(run, sampler, steps, args.n, args.batch_size)
            print(f"| {run.cfg.model} | {r['sampler']} | {r['steps']} | {r['nfe']} | {r['img_s']:.1f} | "
                  f"{r['fid']:.2f} | {r['kid']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
