"""Throughput of the vmapped training program against the hardware, in one run.

For each model count M it trains the paper's synthetic architecture (N = 8, encoder
256-128, decoder 128-256, latent 2, batch 256) and reports model-steps per second, the
achieved FLOP/s, the float32 matmul peak of the same device measured in the same run
(a large jitted matrix product), their ratio, the compile time and the memory of the
state per model. It also times the baseline a user would write without this tool: a
Python loop over the grid, one model at a time, each step a jitted call.

FLOPs of one model step, counted by hand (a multiply-add is 2 FLOPs):
  forward   2 * B * MACs,  MACs = sum over dense layers of fan_in * fan_out
  backward  2 * forward    (gradients with respect to weights and to activations)
  optimizer 12 * P         (Adam: moments, bias correction, sqrt, divide, update)
Element-wise work (ReLU, exp, the KL and the loss) is left out: it is O(B * width),
not O(B * width^2), and the peak it is compared with is a matmul peak.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from phasevae.data import synthetic
from phasevae.model import VAE, example_terms, objective
from phasevae.train import Point, Static, Trainer

N, LATENT, ENCODER, DECODER, BATCH = 8, 2, (256, 128), (128, 256), 256
CHUNK = 100  # steps per timed call
EVAL = 256  # evaluation examples per chunk (small: the bench times training)


@dataclass
class BenchResult:
    models: int
    model_steps_per_s: float
    flops_per_s: float
    matmul_peak_flops_per_s: float
    fraction_of_peak: float
    compile_s: float
    state_bytes_per_model: int
    baseline_model_steps_per_s: float
    speedup_over_baseline: float
    device: str


def layer_sizes() -> list[tuple[int, int]]:
    enc = [N, *ENCODER, 2 * LATENT]
    dec = [LATENT, *DECODER, N]
    return list(zip(enc[:-1], enc[1:], strict=True)) + list(
        zip(dec[:-1], dec[1:], strict=True)
    )


def flops_per_model_step() -> float:
    macs = sum(a * b for a, b in layer_sizes())
    params = sum(a * b + b for a, b in layer_sizes())
    forward = 2.0 * BATCH * macs
    return 3.0 * forward + 12.0 * params


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a jitted float32 n x n matrix product on the default device."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def _setup(m: int):
    static = Static(N, LATENT, ENCODER, DECODER, BATCH, CHUNK)
    trainer = Trainer(static)
    points = Point(
        jnp.asarray(np.geomspace(0.5, 20.0, m), jnp.float32),
        jnp.ones(m, jnp.float32),
        jnp.full(m, 1e-3, jnp.float32),
        jnp.arange(m, dtype=jnp.uint32),
        jnp.zeros(m, jnp.float32),
        jnp.ones(m, jnp.float32),
    )
    x = jnp.asarray(synthetic([8.0, 2.0, 0.5, 0.1, 0.05, 0.04, 0.02, 0.01], 20000, 0))
    return trainer, points, x, x[:EVAL]


def time_grid(m: int, repeats: int = 3) -> tuple[float, float, int]:
    """(model-steps/s, compile seconds, state bytes per model) of the vmapped chunk."""
    trainer, points, x, ex = _setup(m)
    state = trainer.init(points)
    t0 = time.perf_counter()
    compiled = trainer.chunk.lower(state, points, x, ex, np.int32(0)).compile()
    compile_s = time.perf_counter() - t0
    state, _ = compiled(state, points, x, ex, np.int32(0))  # warm-up
    jax.block_until_ready(state)
    best = np.inf
    for r in range(repeats):
        t0 = time.perf_counter()
        state, metrics = compiled(state, points, x, ex, np.int32((r + 1) * CHUNK))
        jax.block_until_ready((state, metrics))
        best = min(best, time.perf_counter() - t0)
    nbytes = sum(a.nbytes for a in jax.tree.leaves(state)) // m
    return m * CHUNK / best, compile_s, nbytes


def time_baseline(m: int, steps: int = 30) -> float:
    """Model-steps/s of a loop over models, each trained with a jitted step."""
    model = VAE(N, LATENT, ENCODER, DECODER)
    tx = optax.adam(1e-3)
    x = jnp.asarray(synthetic([8.0, 2.0, 0.5, 0.1, 0.05, 0.04, 0.02, 0.01], 20000, 0))

    def loss(params, xb, eps, sigma2):
        terms = jax.vmap(example_terms, (None, None, 0, 0, None))(
            model, params, xb, eps, sigma2
        )
        return jnp.mean(objective(terms, 1.0))

    @jax.jit
    def step(params, opt_state, key, sigma2):
        k1, k2 = jax.random.split(key)
        xb = x[jax.random.randint(k1, (BATCH,), 0, x.shape[0])]
        eps = jax.random.normal(k2, (BATCH, LATENT))
        grads = jax.grad(loss)(params, xb, eps, sigma2)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    key = jax.random.key(0)
    params = model.init(key, jnp.zeros(N), jnp.zeros(LATENT))
    jax.block_until_ready(step(params, tx.init(params), key, 1.0))  # compile
    t0 = time.perf_counter()
    for i in range(m):
        params = model.init(jax.random.key(i), jnp.zeros(N), jnp.zeros(LATENT))
        opt_state = tx.init(params)
        for s in range(steps):
            params, opt_state = step(params, opt_state, jax.random.key(s), 1.0)
        jax.block_until_ready(params)
    return m * steps / (time.perf_counter() - t0)


def run(models: list[int], baseline_models: int = 4) -> list[BenchResult]:
    """Time every M in ``models``; the baseline's rate (per model, it does not
    depend on M) is measured once on ``baseline_models`` models."""
    peak = matmul_peak()
    baseline = time_baseline(baseline_models)
    flops = flops_per_model_step()
    out = []
    for m in models:
        rate, compile_s, nbytes = time_grid(m)
        out.append(
            BenchResult(
                models=m,
                model_steps_per_s=rate,
                flops_per_s=rate * flops,
                matmul_peak_flops_per_s=peak,
                fraction_of_peak=rate * flops / peak,
                compile_s=compile_s,
                state_bytes_per_model=nbytes,
                baseline_model_steps_per_s=baseline,
                speedup_over_baseline=rate / baseline,
                device=str(jax.devices()[0]),
            )
        )
    return out


def checkpoint_time(models: int, directory) -> dict:
    """Seconds to write and to read back the full training state of ``models``
    models of the bench architecture, through the run directory's atomic
    checkpoint (gathered to the host, one .npz, fsync, rename)."""
    from phasevae.store import RunDir

    trainer, points, _, _ = _setup(models)
    state = jax.block_until_ready(trainer.init(points))
    run = RunDir(directory)
    ids = [str(i) for i in range(models)]
    t0 = time.perf_counter()
    leaves = [np.asarray(a) for a in jax.tree.leaves(state)]
    run.save_checkpoint(leaves, 0, ids)
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded, _, _ = run.load_checkpoint()
    restored = jax.tree.unflatten(jax.tree.structure(state), loaded)
    jax.block_until_ready(jax.device_put(restored))
    load_s = time.perf_counter() - t0
    return {
        "models": models,
        "bytes": int(run.checkpoint_file.stat().st_size),
        "save_s": save_s,
        "restore_s": load_s,
    }


def as_dicts(results: list[BenchResult]) -> list[dict]:
    return [asdict(r) for r in results]
