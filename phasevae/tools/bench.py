"""Throughput of the vmapped training program against the hardware, in one run.

For each model count M it trains one architecture and reports model-steps per second,
the achieved FLOP/s, the float32 matmul peak of the same device measured in the same
run (a large jitted matrix product), their ratio, the compile time and the memory of
the state per model. It also times the baseline a user would write without this tool:
a Python loop over the grid, one model at a time, each step a jitted call.

Architectures (``--model``):
  mlp   the paper's synthetic one: N = 8, encoder 256-128, decoder 128-256, latent 2,
        batch 256;
  conv  the convolutional VAE (:mod:`phasevae.models.conv`) on 16x16 grayscale patches:
        channels 16-32, kernel 3, latent 2, batch 64;
  ar    the MLP with an autoregressive decoder (``model.context`` = 4: each output
        also gets a learned linear prediction from the 4 features before it);
  gru   the MLP with a recurrent autoregressive decoder (``model.recurrent`` = 32:
        each output also gets a linear readout of a GRU that has read the features
        before it; XLA's cost analysis counts the scanned GRU step once, so
        ``--predict`` undercounts the head by about N);
  pixelcnn  the MLP with a PixelCNN decoder head (``model.mask`` = 1,
        ``mask_layers`` = 3, ``mask_channels`` = 16: three masked convolutions of
        radius 1, mask A then B) on the conv model's 16x16 patches (N = 256),
        batch 64;
  categorical  the MLP with a categorical latent (``model.latent = "categorical"``:
        2 codes of 4 values, Gumbel-softmax draws);
  ladder  the MLP with a two-layer ladder latent (``model.latent = "ladder"``: a
        top layer of 2 dims above the 2, top-down inference);
  vrnn  the variational recurrent network (``model.kind = "vrnn"``) over the N = 8
        features as 8 steps: a GRU state of 32 units, encoder and decoder 64 wide.
        XLA's cost analysis counts a scanned step once, not once per step, so
        ``--predict`` undercounts this model's FLOPs and bytes by about N.

FLOPs of one model step, counted by hand (a multiply-add is 2 FLOPs):
  forward   2 * B * MACs, MACs = sum over dense layers of fan_in * fan_out (and the
            autoregressive head's N * context, the GRU head's N steps of its
            six gates and its readout, the PixelCNN's N pixels through each
            masked layer's offsets * C_in * C_out), over
            convolutions of output pixels * k^2 * C_in * C_out, over transposed
            convolutions of input pixels * k^2 * C_in * C_out (the useful products:
            the zeros a strided transposed convolution multiplies are not counted)
  backward  2 * forward    (gradients with respect to weights and to activations)
  optimizer 12 * P         (Adam: moments, bias correction, sqrt, divide, update)
Element-wise work (ReLU, exp, the KL and the loss) is left out: it is O(B * width),
not O(B * width^2), and the peak it is compared with is a matmul peak.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from phasevae.data import synthetic
from phasevae.engine.step import Point, Static, Trainer
from phasevae.errors import stop_if_terminated
from phasevae.models.conv import ConvVAE
from phasevae.models.registry import footprint
from phasevae.models.vae import example_terms, objective
from phasevae.models.vrnn import VRNN

N, LATENT, ENCODER, DECODER, BATCH = 8, 2, (256, 128), (128, 256), 256
IMAGE, CHANNELS, KERNEL, CONV_BATCH = (16, 16, 1), (16, 32), 3, 64
AR_CONTEXT = 4  # the ``ar`` model's context: half the features
CODES = 4  # the ``categorical`` model's values per code (LATENT codes)
TOP = 2  # the ``ladder`` model's top layer
STATE, STEP_WIDTH = 32, 64  # the ``vrnn`` model's GRU and its MLPs' hidden width
GRU_HEAD = 32  # the ``gru`` model's head: its GRU's width
PIXELCNN = (1, 3, 16)  # the ``pixelcnn`` model's head: radius, layers, channels
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
    state_bytes_per_model: int  # parameters + optimizer state
    program_bytes_per_model: int  # the compiled step's memory, shared data excluded
    baseline_model_steps_per_s: float
    speedup_over_baseline: float
    device: str
    model: str = "mlp"
    precision: str = "float32"  # train.precision of the timed program


def static_for(model: str, precision: str = "float32") -> Static:
    """The training program's static configuration for ``model`` at
    ``precision`` (train.precision)."""
    if model == "vrnn":
        module = VRNN(N, 1, STATE, (STEP_WIDTH,), (STEP_WIDTH,))
        return Static(N, 1, (), (), BATCH, CHUNK, module=module, precision=precision)
    if model == "conv":
        module = ConvVAE(LATENT, IMAGE, CHANNELS, KERNEL)
        size = math.prod(IMAGE)
        return Static(
            size,
            LATENT,
            (),
            (),
            CONV_BATCH,
            CHUNK,
            module=module,
            example_shape=IMAGE,
            precision=precision,
        )
    latent = {"categorical": "categorical", "ladder": "ladder"}.get(model, "gaussian")
    image = model == "pixelcnn"
    radius, layers, channels = PIXELCNN if image else (0, 1, 16)
    return Static(
        math.prod(IMAGE) if image else N,
        LATENT,
        ENCODER,
        DECODER,
        CONV_BATCH if image else BATCH,
        CHUNK,
        precision=precision,
        mask=radius,
        image=IMAGE[:2] if image else (),
        mask_layers=layers,
        mask_channels=channels,
        context=AR_CONTEXT if model == "ar" else 0,
        recurrent=GRU_HEAD if model == "gru" else 0,
        latent=latent,
        latent_categories=CODES if model == "categorical" else 0,
        top_dim=TOP if model == "ladder" else 0,
    )


def bench_data(model: str) -> np.ndarray:
    """The training data (n, N) float32: Gaussian with the paper's spectrum for the
    MLP, scikit-image patches scaled to [-1, 1] for the conv and PixelCNN models."""
    if model in ("conv", "pixelcnn"):
        from phasevae.data import patches

        return (patches(4096, 0) / 127.5 - 1.0).astype(np.float32)
    return synthetic([8.0, 2.0, 0.5, 0.1, 0.05, 0.04, 0.02, 0.01], 20000, 0).astype(
        np.float32
    )


def gru_sizes(inputs: int, units: int) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of a GRU cell's six dense maps: its three gates from the
    ``inputs``, three from its ``units`` (flax: hr and hz have no bias)."""
    return [(inputs, units)] * 3 + [(units, units)] * 3


def vrnn_layer_sizes() -> list[tuple[int, int]]:
    """(fan_in, fan_out) of the dense layers the ``vrnn`` model applies at one step
    (it applies them at each of its N steps): the prior (state -> 2), the encoder
    ([x_t, h] -> 64 -> 2), the decoder ([z_t, h] -> 64 -> 1) and the GRU's six
    (its three gates from the input [x_t, z_t], three from the state)."""
    h, w = STATE, STEP_WIDTH
    return [(h, 2), (1 + h, w), (w, 2), (1 + h, w), (w, 1)] + gru_sizes(2, h)


def pixelcnn_sizes() -> list[tuple[int, int]]:
    """(fan_in, fan_out) of the ``pixelcnn`` head's masked layers at one pixel: the
    first reads mask A's offsets of one channel, the others mask B's (one more) of
    C channels; the last outputs one channel, without a bias."""
    radius, layers, c = PIXELCNN
    a = 2 * radius * (radius + 1)
    return [(a, c)] + [((a + 1) * c, c)] * (layers - 2) + [((a + 1) * c, 1)]


def layer_sizes(model: str = "mlp") -> list[tuple[int, int]]:
    """(fan_in, fan_out) of every dense layer of the bench's MLP ``model``: the
    encoder's output is 2 k (mean and log-variance), a categorical latent's k codes
    of CODES logits, or a ladder's two layers' (2 (k + TOP)), whose top-down map
    (TOP -> k) is one layer more; the decoder reads k, or k CODES one-hot inputs."""
    out = {"categorical": LATENT * CODES, "ladder": 2 * (LATENT + TOP)}
    reads = LATENT * CODES if model == "categorical" else LATENT
    dim = math.prod(IMAGE) if model == "pixelcnn" else N
    enc = [dim, *ENCODER, out.get(model, 2 * LATENT)]
    dec = [reads, *DECODER, dim]
    down = [(TOP, LATENT)] if model == "ladder" else []
    return (
        list(zip(enc[:-1], enc[1:], strict=True))
        + down
        + list(zip(dec[:-1], dec[1:], strict=True))
    )


def conv_macs() -> int:
    """Multiply-adds of one example through the bench's conv VAE (module docstring)."""
    (h, w, c), k2 = IMAGE, KERNEL * KERNEL
    macs = 0
    for out in CHANNELS:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        macs += h * w * k2 * c * out
        c = out
    macs += h * w * c * 2 * LATENT + LATENT * h * w * c  # head, then the lift
    for out in (*reversed(CHANNELS[:-1]), IMAGE[2]):
        macs += h * w * k2 * c * out
        h, w, c = 2 * h, 2 * w, out
    return macs


def flops_per_model_step(model: str = "mlp") -> float:
    if model == "conv":
        params, _ = footprint(static_for(model).module, IMAGE, LATENT)
        return 3.0 * 2.0 * CONV_BATCH * conv_macs() + 12.0 * params
    if model == "vrnn":  # N steps of the same layers; the GRU's hr, hz lack a bias
        sizes = vrnn_layer_sizes()
        macs = N * sum(a * b for a, b in sizes)
        params = sum(a * b + b for a, b in sizes) - 2 * STATE
        return 3.0 * 2.0 * BATCH * macs + 12.0 * params
    head = N * AR_CONTEXT if model == "ar" else 0  # the autoregressive head
    head_params = head
    if model == "gru":  # N steps of the GRU on one input, then a readout to 1
        sizes = [*gru_sizes(1, GRU_HEAD), (GRU_HEAD, 1)]
        head = N * sum(a * b for a, b in sizes)
        head_params = sum(a * b + b for a, b in sizes) - 2 * GRU_HEAD
    if model == "pixelcnn":  # every pixel through each masked layer
        sizes = pixelcnn_sizes()
        head = math.prod(IMAGE) * sum(a * b for a, b in sizes)
        head_params = sum(a * b + b for a, b in sizes) - 1  # the last: no bias
    macs = sum(a * b for a, b in layer_sizes(model)) + head
    params = sum(a * b + b for a, b in layer_sizes(model)) + head_params
    forward = 2.0 * static_for(model).batch_size * macs
    return 3.0 * forward + 12.0 * params


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a jitted float32 n x n matrix product on the default device."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        stop_if_terminated()
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def refuse_too_many(m: int, model: str, data_shape: tuple[int, int]) -> None:
    """Refuse (:class:`phasevae.engine.devices.TooLarge`, exit 2) more models than the
    devices' memory holds, estimated as a sweep estimates it, before allocating."""
    from phasevae.engine.devices import Placement, check_fits
    from phasevae.spec import spec_from_dict

    static = static_for(model)
    layout = {"latent_dim": LATENT, "encoder": list(ENCODER), "decoder": list(DECODER)}
    layout["context"] = static.context
    layout["recurrent"] = static.recurrent
    data = {"eval_samples": EVAL}
    if model == "pixelcnn":
        radius, layers, channels = PIXELCNN
        layout |= {"mask": radius, "mask_layers": layers, "mask_channels": channels}
        data["source"] = "patches"
    if static.latent == "categorical":
        layout |= {"latent": "categorical", "latent_categories": CODES}
    if static.latent == "ladder":
        layout |= {"latent": "ladder", "top_dim": TOP}
    if model == "vrnn":
        width = [STEP_WIDTH]
        layout = {"kind": "vrnn", "latent_dim": 1, "state": STATE}
        layout |= {"encoder": width, "decoder": width}
    spec = spec_from_dict(  # the bench's architecture, for the estimate
        {
            "model": layout,
            "train": {"batch_size": static.batch_size},
            "data": data,
        }
    )
    shapes = {"conv": (IMAGE, LATENT), "vrnn": ((N,), 1)}
    size = footprint(static.module, *shapes[model]) if model in shapes else None
    where = Placement.create(m)
    check_fits(where, spec, data_shape, size, f"{m:,} models", "use fewer --models")


def placed_inputs(m: int, model: str = "mlp", precision: str = "float32"):
    """The trainer and placed inputs for M models, laid out as a sweep lays them out
    (models axis sharded over every device, data replicated)."""
    from phasevae.engine.devices import Placement

    place = Placement.create(m)
    x = bench_data(model)
    refuse_too_many(m, model, x.shape)
    trainer = Trainer(static_for(model, precision), place.shard)
    points = Point.from_table(
        {
            "sigma2": np.geomspace(0.5, 20.0, m),
            "beta": np.ones(m),
            "learning_rate": np.full(m, 1e-3),
            "seed": np.arange(m),
        }
    )
    return (
        trainer,
        place.models(points),
        place.replicated(x),
        place.replicated(x[:EVAL]),
    )


def time_grid(
    m: int, repeats: int = 3, model: str = "mlp", precision: str = "float32"
) -> tuple[float, float, int, int, int]:
    """Model-steps/s, compile seconds, state bytes per model, the compiled
    program's bytes per model (arguments + outputs + temporaries, less the shared
    data) of the vmapped chunk, and the number of devices it ran on. Padding models
    (to a multiple of the device count) are counted as work, not as models."""
    trainer, points, x, ex = placed_inputs(m, model, precision)
    state = trainer.init(points)
    t0 = time.perf_counter()
    compiled = trainer.chunk.lower(state, points, x, ex, np.int32(0)).compile()
    compile_s = time.perf_counter() - t0
    state, _ = compiled(state, points, x, ex, np.int32(0))  # warm-up
    jax.block_until_ready(state)
    best = np.inf
    for r in range(repeats):
        stop_if_terminated()
        t0 = time.perf_counter()
        state, metrics = compiled(state, points, x, ex, np.int32((r + 1) * CHUNK))
        jax.block_until_ready((state, metrics))
        best = min(best, time.perf_counter() - t0)
    nbytes = sum(a.nbytes for a in jax.tree.leaves(state)) // m
    program = program_bytes(compiled, x, ex)
    devices = len(x.sharding.device_set)
    per_device = -(-m // devices)
    return m * CHUNK / best, compile_s, nbytes, program // per_device, devices


def program_bytes(compiled, x, ex) -> int:
    """One device's bytes of the compiled chunk (arguments, outputs, temporaries;
    donated buffers once), less its share of the data ``x`` and ``ex`` the models
    share."""
    mem = compiled.memory_analysis()
    return (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        + mem.temp_size_in_bytes
        - mem.alias_size_in_bytes
        - x.nbytes // len(x.sharding.device_set)
        - ex.nbytes // len(ex.sharding.device_set)
    )


def time_baseline(
    m: int, steps: int = 30, model: str = "mlp", repeats: int = 3
) -> float:
    """Model-steps/s of a loop over models, each trained with a jitted step: the
    best of ``repeats`` passes, each timing the steps alone (every model's
    parameters made before the clock starts), as :func:`time_grid` takes the best
    of its repeats of the compiled chunk."""
    static = static_for(model)
    trainer = Trainer(static)  # for its model and reparameterisation noise
    vae = trainer.model
    tx = optax.adam(1e-3)
    x = jnp.asarray(bench_data(model)).reshape(-1, *static.shape)
    batch = static.batch_size
    zero = (jnp.zeros(static.shape), trainer.noise(jax.random.key(0), 1)[0])

    def loss(params, xb, eps, sigma2):
        terms = jax.vmap(example_terms, (None, None, 0, 0, None))(
            vae, params, xb, eps, sigma2
        )
        return jnp.mean(objective(terms, 1.0))

    @jax.jit
    def step(params, opt_state, key, sigma2):
        k1, k2 = jax.random.split(key)
        xb = x[jax.random.randint(k1, (batch,), 0, x.shape[0])]
        eps = trainer.noise(k2, batch)
        grads = jax.grad(loss)(params, xb, eps, sigma2)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    starts = [vae.init(jax.random.key(i), *zero) for i in range(m)]
    states = [(p, tx.init(p)) for p in starts]
    jax.block_until_ready(step(*states[0], jax.random.key(0), 1.0))  # compile
    best = np.inf
    for _ in range(repeats):
        stop_if_terminated()
        t0 = time.perf_counter()
        for params, opt_state in states:
            for s in range(steps):
                params, opt_state = step(params, opt_state, jax.random.key(s), 1.0)
            jax.block_until_ready(params)
        best = min(best, time.perf_counter() - t0)
    return m * steps / best


def baseline_as_a_user_runs_it(m: int, model: str = "mlp") -> float:
    """:func:`time_baseline` in a fresh process with JAX's defaults (one CPU device
    using every core), not the device split this process may run with."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    flags = [f for f in flags if "force_host_platform_device_count" not in f]
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", XLA_FLAGS=" ".join(flags))
    code = (
        "from phasevae.tools.bench import time_baseline; "
        f"print(time_baseline({m}, model={model!r}))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while True:  # SIGTERM (a flag, stop_if_terminated) kills the child too
            try:
                out, err = proc.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                stop_if_terminated()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, out, err)
    return float(out.split()[-1])


def run(
    models: list[int],
    baseline_models: int = 4,
    model: str = "mlp",
    precision: str = "float32",
    repeats: int = 3,
) -> list[BenchResult]:
    """Time every M in ``models`` at ``precision``, the best of ``repeats`` timed
    chunks after a warm-up one; the baseline's rate (per model, it does not depend
    on M; JAX's default precision) is measured once on ``baseline_models``
    models."""
    refuse_too_many(max(models), model, bench_data(model).shape)
    peak = matmul_peak()
    baseline = baseline_as_a_user_runs_it(baseline_models, model)
    flops = flops_per_model_step(model)
    out = []
    for m in models:
        stop_if_terminated()
        rate, compile_s, nbytes, program, devices = time_grid(
            m, repeats, model=model, precision=precision
        )
        out.append(
            BenchResult(
                models=m,
                model_steps_per_s=rate,
                flops_per_s=rate * flops,
                matmul_peak_flops_per_s=peak,
                fraction_of_peak=rate * flops / peak,
                compile_s=compile_s,
                state_bytes_per_model=nbytes,
                program_bytes_per_model=program,
                baseline_model_steps_per_s=baseline,
                speedup_over_baseline=rate / baseline,
                device=f"{devices} x {jax.devices()[0].device_kind}",
                model=model,
                precision=precision,
            )
        )
    return out


def checkpoint_time(models: int, directory, chunks: int = 2) -> dict:
    """What checkpointing costs a sweep of ``models`` models of the bench
    architecture, measured in one run: ``chunks`` chunks of training alone, then the
    same number with a checkpoint after every chunk (orbax, asynchronous: training
    goes on while it is written; the last one is waited for), then a restore onto
    the host and the devices.

    Returns:
      models, bytes (one save on disk), train_s (per chunk), save_blocking_s (per
      save, what training waited for), save_cost_s (per save, the extra wall time
      of the checkpointed chunks, writing in the background included; 0 when they
      ran no slower than the others, the cost then being below the noise),
      overhead_every_chunk (save_cost_s / train_s) and overhead_at_interval (a
      sweep's: one save per chunk or per ``CHECKPOINT_SECONDS``, whichever is
      longer), restore_s.
    """
    from phasevae.engine.devices import Placement
    from phasevae.engine.loop import CHECKPOINT_SECONDS
    from phasevae.spec import load_spec
    from phasevae.store import RunDir

    trainer, points, x, ex = placed_inputs(models)
    state = trainer.init(points)
    compiled = trainer.chunk.lower(state, points, x, ex, np.int32(0)).compile()
    state, _ = jax.block_until_ready(compiled(state, points, x, ex, np.int32(0)))
    run, ids = RunDir(directory), [str(i) for i in range(models)]
    run.claim(load_spec())  # a run of its own: every checkpoint names its run

    def train(save: bool) -> tuple[float, float]:
        nonlocal state
        blocked, t0 = 0.0, time.perf_counter()
        for c in range(chunks):
            state, metrics = compiled(state, points, x, ex, np.int32(c * CHUNK))
            jax.device_get(metrics)  # the loop's one sync point per chunk
            if save:
                t1 = time.perf_counter()
                run.save_checkpoint(jax.tree.leaves(state), models, c, ids)
                blocked += time.perf_counter() - t1
        if save:
            run.wait_for_checkpoint()
        return time.perf_counter() - t0, blocked

    alone, _ = train(save=False)
    checkpointed, blocked = train(save=True)
    t0 = time.perf_counter()
    loaded = run.load_checkpoint()
    restored = jax.tree.unflatten(jax.tree.structure(state), loaded["leaves"])
    jax.block_until_ready(Placement.create(models).models(restored))
    restore_s = time.perf_counter() - t0
    newest = max(p for p in run.checkpoints.dir.iterdir() if p.is_dir())
    cost = max(checkpointed - alone, 0.0) / chunks
    return {
        "models": models,
        "bytes": sum(f.stat().st_size for f in newest.rglob("*") if f.is_file()),
        "train_s": alone / chunks,
        "save_blocking_s": blocked / chunks,
        "save_cost_s": cost,
        "overhead_every_chunk": cost / (alone / chunks),
        "overhead_at_interval": cost / max(alone / chunks, CHECKPOINT_SECONDS),
        "restore_s": restore_s,
    }


def as_dicts(results: list[BenchResult]) -> list[dict]:
    return [asdict(r) for r in results]


def locate(spec_path=None, max_uniform: int = 128, budget: int | None = None) -> dict:
    """Run ``phasevae locate`` on ``sweeps/locate.toml`` (or ``spec_path``) from a
    cold start, then find how many model-steps uniform sigma^2 grids need for
    intervals as narrow: at every beta of the spec (one curve each; several betas
    make a phase diagram's boundary), a uniform grid over the range of locate's
    first grid at that beta (same seeds and steps), of 8, 16, 32 ... points (up to
    ``max_uniform``), trained in full until the median half-width over the betas is
    at most locate's.

    Returns:
      locate_wall_s (compile included), locate_model_steps, and for the first
      uniform size whose intervals are as narrow (or the largest tried, with
      ``uniform_reached`` false): uniform_points, uniform_model_steps and
      model_steps_ratio_vs_uniform; ``curves``, one per beta: beta, sigma2_c,
      rel_error (against lambda_max / beta), ci, half_width, verdict and
      model_steps of locate and of that uniform grid (``uniform_`` prefixed).
      With one beta its locate_ and uniform_ values are also at the top level
      (locate_sigma2_c, locate_ci, ...); with several, locate_half_width and
      uniform_half_width are the medians over the betas.
    """
    import tempfile

    from phasevae.data import load_for_model
    from phasevae.spec import load_spec
    from phasevae.tools.locate import locate as run_locate

    path = spec_path or _locate_spec_path()
    spec = load_spec(path)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_locate(path, f"{tmp}/locate", budget=budget, say=lambda _: None)
        wall = time.perf_counter() - t0
    lam = float(load_for_model(spec).eigenvalues[0])
    curves = [
        {
            "beta": c["beta"],
            **{k: c[k] for k in ("sigma2_c", "ci", "half_width", "verdict")},
            "rel_error": _rel(c["sigma2_c"], lam / c["beta"]),
            "model_steps": c["model_steps"],
        }
        for c in result["curves"]
    ]
    goal = _median([c["half_width"] for c in curves])

    num = 8
    while True:
        stop_if_terminated()
        scored = [c | _uniform(spec, lam, c["beta"], num) for c in curves]
        u_half = _median([c["uniform_half_width"] for c in scored])
        reached = math.isfinite(goal) and u_half <= goal
        if reached or 2 * num > max_uniform:
            break
        num *= 2
    spent = sum(c["model_steps"] for c in scored)
    u_steps = sum(c["uniform_model_steps"] for c in scored)
    out = {
        "locate_wall_s": wall,
        "locate_model_steps": spent,
        "locate_half_width": goal,
        "uniform_points": num,
        "uniform_reached": reached,
        "uniform_model_steps": u_steps,
        "uniform_half_width": u_half,
        "model_steps_ratio_vs_uniform": u_steps / spent,
        "curves": scored,
    }
    if len(scored) == 1:
        (c,) = scored
        out |= {f"locate_{k}": c[k] for k in ("sigma2_c", "rel_error", "ci", "verdict")}
        out |= {k: c[k] for k in c if k.startswith("uniform_")}
    return out


def _uniform(spec, lam: float, beta: float, num: int) -> dict:
    """A uniform grid of ``num`` sigma^2 over locate's first range at ``beta``,
    trained in full and estimated: its ``uniform_`` values."""
    import dataclasses
    import tempfile

    from phasevae.analysis import estimate
    from phasevae.engine.sweep import run_sweep
    from phasevae.spec import Range
    from phasevae.tools.locate import SPAN

    grid = dataclasses.replace(
        spec.grid,
        sigma2=Range(SPAN[0] * lam / beta, SPAN[1] * lam / beta, num, "log"),
        beta=(beta,),
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = run_sweep(dataclasses.replace(spec, grid=grid), f"{tmp}/uniform")
    spectrum = run.meta.spectrum
    t = estimate.estimate_transition(
        run.metrics,
        spec.model.kl_dims(spectrum.get("dim", 0)),
        spectrum["lambda_max"],
        spectrum.get("lambda_max_eval"),
    )
    return {
        "uniform_sigma2_c": t.sigma2_c,
        "uniform_rel_error": _rel(t.sigma2_c, lam / beta),
        "uniform_ci": t.ci,
        "uniform_half_width": estimate.half_width(t.sigma2_c, t.ci),
        "uniform_verdict": t.verdict,
        "uniform_model_steps": num * len(spec.grid.seeds) * spec.train.steps,
    }


def _rel(value: float | None, theory: float) -> float | None:
    return None if value is None else value / theory - 1.0


def _median(values) -> float:
    """The median half-width, a curve without an interval counting as infinite."""
    return float(np.median([math.inf if v is None else v for v in values]))


def _locate_spec_path():
    from importlib import resources

    return str(resources.files("phasevae.sweeps") / "locate.toml")
