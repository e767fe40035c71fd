"""The SpectraLift engine: a per-pixel MLP that maps MSI spectra to HSI spectra (arrays in, arrays out).

Method (Shah & Duarte 2025, "SpectraLift", arXiv 2507.13339, and the authors' TensorFlow code): apply the MSI
sensor's response matrix ``R`` (m x C) to the low-resolution hyperspectral image (LR-HSI) to synthesise a
low-resolution multispectral image (LR-MSI); train a small MLP to map every LR-MSI pixel spectrum back to its LR-HSI
spectrum; then run the high-resolution MSI (HR-MSI) pixels through that MLP. Only the spectral mapping is learned, so
the output keeps the MSI's spatial detail.

Faithful settings taken from the reference (the ``"spectralift"`` preset):

* network: six dense layers of width 64, LeakyReLU(0.3) after each, residual adds
  ``x1 = L1(x); x = L2(x1) + x1; x = L4(L3(x)) + x; x = L6(L5(x)) + x``, then a linear layer to C bands;
  Keras defaults: Glorot-uniform kernels, zero biases;
* loss: mean absolute error over all pixels and bands, full batch (every valid LR pixel in every step);
* optimiser: Adam with the Keras defaults beta1 = 0.9, beta2 = 0.999, epsilon = 1e-7 in Keras' form (epsilon is
  added to ``sqrt(v)`` before bias correction), implemented here on one flat parameter buffer;
* one-cycle learning rate per step (see :func:`learning_rate_schedule`), 1e-3 -> 1e-2 -> 1e-6 over 2500 steps;
* data scaled to [0, 1] and the output clipped to [0, 1].
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from geolift.errors import ModelError, warn
from geolift.exact import ExactMatrix

__all__ = [
    "PRESETS",
    "ExactNetwork",
    "MIN_TRAINING_PIXELS",
    "SpectraLift",
    "SpectraLiftMLP",
    "SpectraLiftMembers",
    "averaged_output_layer",
    "fold_msi_update",
    "learning_rate_schedule",
    "msi_update_gain",
]

log = logging.getLogger("geolift")

Progress = Callable[[int, int, str], None]

#: Named recipes. ``"spectralift"`` is the paper's reference recipe, kept bit for bit. ``"geolift"`` (the default)
#: trains the same network the same way, but on a stratified sample of at most ``max_train_pixels`` LR pixels per
#: step (so a step costs the same on any scene; smaller scenes are exactly full batch), returns the mean of the
#: weights over the last ``snapshot_fraction`` of the steps (snapshot averaging at the schedule's low-rate tail,
#: nearly free), clips its predictions to ``[0, hi]`` instead of the LR-HSI's ``[lo, hi]`` (``nonnegative``:
#: reflectance and radiance are never negative, an LR minimum below 0 is noise, and one above 0 is a mixture an HR
#: pixel may be darker than; benchmarks/broad.py's 24-case screen: SAM -7.7 -> -12.7 % against the faithful preset,
#: mostly Potsdam's water), moves each prediction towards agreement with its own MSI pixel (``msi_update``,
#: :func:`msi_update_gain`; the same screen: +1.80 -> +2.11 dB, SAM -> -15.4 %, the worst case +0.65 -> +1.01 dB),
#: and asks the pipeline to run the consistency step of :mod:`geolift.refine` on the prediction (``consistency``).
#: It trains ``members`` = 3 networks side by side (:class:`SpectraLiftMembers`) for 833 steps each, a third of the
#: paper's 2500: on scenes of a few hundred to a few thousand LR pixels a long schedule fits the LR-HSI's noise, and
#: the members fit different noise, so their mean is better than any one of them. Then one student network learns
#: their mean at the LR pairs and at the HR-MSI's own pixels, for ``distill`` = 0.36 of the steps, starting from
#: member 0 (:meth:`SpectraLift._train_student`): the members' quality at one network's inference. Against the
#: faithful preset (docs/benchmarks.md, "Stop 28" to "Stop 30"), HyperBench's zoo, seeds 0-2: one network of 1250
#: steps +2.00 dB, SAM -10.4 %, training 0.50 x the faithful fit; three members and their student (without the
#: jitter, below) +2.20 dB, -15.6 %, 1.12 x; on benchmarks/broad.py +1.97 / +2.13 dB, SAM -16.3 / -18.4 %.
#: ``student_hidden`` = 32 (with ``distill`` = 1.0: a fresh student, as many steps as a member) halves the inference
#: (0.48 instead of 1.07 CPU-s per 512 x 512 tile) for about the same benchmark figures (seed 0: zoo +2.34 -> +2.30
#: dB, SAM -16.3 -> -16.1 %; benchmarks/broad.py +2.18 -> +2.17 dB, -19.1 -> -19.3 %), but a fresh student carries
#: the members' mean less well to pixels purer than any LR pixel (tests/test_model.py's mixing scene: 1.4-1.5 x the
#: members' error, against 1.1 x fine-tuned from member 0); an option, not the default (docs/benchmarks.md, "Stop 31").
#: ``brightness_jitter`` = j scales each training pair (LR-MSI, LR-HSI) by its own factor from ``[1 - j, 1 + j]``
#: every step - a darker or brighter copy of a material is a valid pair because ``R`` is linear - which taught one
#: network to keep a spectrum's shape for HR pixels darker than any blur-mixed LR pixel (pure water): for one network
#: of 2500 steps with the MSI update, j = 0 / 0.1 / 0.25 gave +1.61 / +1.76 / +1.80 dB and SAM -12.9 / -14.2 /
#: -15.4 % on benchmarks/broad.py. The student, which learns at the HR-MSI's own (darker, purer) pixels, does that
#: better, and the jitter then only blurs the fit where LR pixels are already pure (sharp PSFs): with the ensemble,
#: j = 0 / 0.1 / 0.25 gave +2.34 / +2.35 / +2.34 dB and SAM -16.3 / -16.0 / -14.3 % on the zoo (seed 0), and j = 0
#: +2.18 dB, -19.1 % on benchmarks/broad.py (seed 0). The default has no jitter; the option stays.
PRESETS: dict[str, dict] = {
    "spectralift": dict(steps=2500, hidden=64, lr_initial=1e-3, lr_max=1e-2, lr_final=1e-6, warmup=0.3,
                        max_train_pixels=None, consistency=False, brightness_jitter=0.0, snapshot_fraction=0.0,
                        nonnegative=False, msi_update=False, members=1, distill=0.0, student_hidden=None),
    "geolift": dict(steps=833, hidden=64, lr_initial=1e-3, lr_max=1e-2, lr_final=1e-6, warmup=0.3,
                    max_train_pixels=2048, consistency=True, brightness_jitter=0.0, snapshot_fraction=0.2,
                    nonnegative=True, msi_update=True, members=3, distill=0.36, student_hidden=None),
}

#: The preset ``SpectraLift()`` uses when none is named.
DEFAULT_PRESET = "geolift"

#: Strata for the stratified pixel sample (k-means clusters of the LR-MSI spectra).
SAMPLING_STRATA = 16

#: Fewer valid LR pixels than this cannot define a spectral mapping worth trusting.
MIN_TRAINING_PIXELS = 16

LEAKY_SLOPE = 0.3  # Keras LeakyReLU(alpha=0.3), as in the reference
ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-7  # Keras Adam defaults the reference relies on

#: Member k of an ensemble (``members``) is initialised, sampled and jittered as a single fit with seed
#: ``seed + k * MEMBER_SEED_STRIDE`` would be: member 0 is the single fit with ``seed``.
MEMBER_SEED_STRIDE = 1000

#: HR-MSI pixels an ensemble's one-network student is trained on (besides the LR pairs): a regular grid of at most
#: about this many, every :func:`distillation_stride`-th row and column (see ``SpectraLift(distill=...)``).
DISTILL_PIXELS = 8192

#: A student as wide as the members (``student_hidden=None`` or ``hidden``) starts from member 0's weights and
#: fine-tunes on a one-cycle schedule ten times lower than the members' (1e-4 -> 1e-3 -> the recipe's final rate), on
#: at most this many sampled pairs per step; one of another width trains afresh on the members' own. On HyperBench's
#: zoo (seed 0, three members of 833 steps) this kept the members' mean within 0.03 dB with 300 steps, where a fresh
#: network needed 833 steps of 2048 pairs (docs/benchmarks.md, "Stop 29").
STUDENT_LEARNING_RATES = (1e-4, 1e-3)
STUDENT_TRAIN_PIXELS = 1024

#: Pixels per step of inference: the float64 activations of a step (64 wide) and its output (C bands) stay in the
#: CPU cache. Any value gives the same bits (see :class:`ExactNetwork`); this one is only the fastest measured.
_INFERENCE_PIXELS = 2048


#: The MSI update's Tikhonov weight, relative to the mean variance of the scene's LR-MSI bands. 600-step screens of
#: benchmarks/broad.py (24 cases, seed 0, against the faithful preset): 1e-3 / 3e-3 / 1e-2 gave +2.06 / +2.11 /
#: +2.08 dB and SAM -14.8 / -15.4 / -15.5 %. Lighter weights suit large ratios (Potsdam at 8: +2.30 dB at 1e-3,
#: +1.77 at 1e-1), heavier ones ratio 2 with 7-8 narrow MSI bands (Berlin WorldView-3: +2.57 and +3.45 dB), where
#: the update mostly copies the MSI's noise.
MSI_UPDATE_REGULARIZATION = 3e-3
_COVARIANCE_CHUNK = 16384  # training spectra per step of the covariance sums


def msi_update_gain(target: np.ndarray, R: np.ndarray, regularization: float | None = None) -> np.ndarray | None:
    """The (C, m) gain ``G = S Rᵀ (R S Rᵀ + λ I)⁻¹`` of the MSI update; None when the spectra's MSI view does not vary.

    ``S`` is the covariance of the training spectra ``target`` ((n, C), scaled units), ``λ`` is ``regularization``
    (None: :data:`MSI_UPDATE_REGULARIZATION`) times the mean variance of their MSI bands. The network should give a
    spectrum ``x`` whose MSI view ``R·x`` is the pixel ``m`` it was given; outside what it was trained on (a material
    every LR pixel mixed with others, as water is at large ratios) it does not. ``x + G(m - R·x)`` is the linear
    minimum-variance step towards agreement with the scene's spectral covariance as the prior: it moves ``x`` the
    ways this scene's spectra vary, not along the MSI bands' boxy responses. The sums run in torch in fixed chunks
    (numpy's BLAS may round differently with another thread count, and ``geolift batch`` must fit what ``geolift
    fuse`` fits).
    """
    regularization = MSI_UPDATE_REGULARIZATION if regularization is None else float(regularization)
    R = np.asarray(R, dtype=np.float64)
    n = target.shape[0]
    with torch.inference_mode():
        total = torch.zeros(target.shape[1], dtype=torch.float64)
        for a in range(0, n, _COVARIANCE_CHUNK):
            total += torch.from_numpy(np.asarray(target[a:a + _COVARIANCE_CHUNK], dtype=np.float64)).sum(dim=0)
        mean = total / max(n, 1)
        gram = torch.zeros((target.shape[1], target.shape[1]), dtype=torch.float64)
        for a in range(0, n, _COVARIANCE_CHUNK):
            chunk = torch.from_numpy(np.asarray(target[a:a + _COVARIANCE_CHUNK], dtype=np.float64)) - mean
            gram += chunk.T @ chunk
        covariance = gram / max(n - 1, 1)
        response = torch.from_numpy(R)
        seen = response @ covariance @ response.T  # (m, m): the covariance of the MSI view
        spread = float(torch.trace(seen)) / R.shape[0]
        if not spread > 0.0:
            return None
        weighted = seen + regularization * spread * torch.eye(R.shape[0], dtype=torch.float64)
        return (covariance @ response.T @ torch.linalg.inv(weighted)).numpy()


def distillation_stride(height: int, width: int, limit: int = DISTILL_PIXELS) -> int:
    """The row and column step of the HR pixels an ensemble's student learns from: the smallest step whose grid
    (rows and columns 0, s, 2s, ...) has at most ``limit`` pixels. The grid depends on the image's shape alone, so
    ``geolift fuse`` (which reads those rows from the file) and ``SpectraLift.predict`` on the same array train the
    same student."""
    step = max(1, math.isqrt(max(height * width // max(limit, 1), 1)))
    while -(-height // step) * -(-width // step) > limit:
        step += 1
    return step


def distillation_pixels(hr_msi: np.ndarray) -> np.ndarray:
    """The (n, m) HR-MSI pixels on the :func:`distillation_stride` grid of an (m, H, W) cube, row by row."""
    hr_msi = np.asarray(hr_msi)
    step = distillation_stride(hr_msi.shape[1], hr_msi.shape[2])
    return hr_msi[:, ::step, ::step].reshape(hr_msi.shape[0], -1).T


def averaged_output_layer(state: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The (C, K * hidden) weight and (C,) bias, float64, whose product with K members' features side by side is the
    mean of their outputs: each member's output weights divided by K, the biases averaged (one network: as is)."""
    weight = np.asarray(state["output_layer.weight"], np.float64)
    bias = np.asarray(state["output_layer.bias"], np.float64)
    if weight.ndim == 2:
        return weight, bias
    members = weight.shape[0]
    return np.concatenate(list(weight / members), axis=1), bias.sum(axis=0) / members


def fold_msi_update(state: dict[str, np.ndarray], R: np.ndarray, gain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The output layer with the MSI update folded in: ``x + G(m - R·x)`` of ``x = W·h + b`` is
    ``[(I - GR)W | G]·[h; m] + (I - GR)b``, so the update costs the output layer m more inputs instead of passes over
    every band. Returns that (C, hidden + m) weight and (C,) bias (scaled units, as the network's); for an ensemble
    ``W`` and ``b`` are :func:`averaged_output_layer`'s, so the update applies to the members' mean. Formed in torch
    at fit time and kept with the weights, so every process predicting with the model uses the same bits."""
    weight, bias = averaged_output_layer(state)
    with torch.inference_mode():
        w, b = torch.from_numpy(weight), torch.from_numpy(bias)
        g = torch.from_numpy(np.asarray(gain, np.float64))
        keep = torch.eye(w.shape[0], dtype=torch.float64) - g @ torch.from_numpy(np.asarray(R, np.float64))
        return torch.cat([keep @ w, g], dim=1).numpy(), (keep @ b).numpy()


def learning_rate_schedule(steps: int, lr_initial: float, lr_max: float, lr_final: float,
                           warmup: float = 0.3) -> np.ndarray:
    """Learning rate for steps 1..steps (float64 array), the reference's one-cycle policy.

    Linear rise from ``lr_initial`` towards ``lr_max`` while ``step < warmup*steps``, then a linear fall from
    ``lr_max`` that reaches ``lr_final`` exactly at the last step.
    """
    step = np.arange(1, steps + 1, dtype=np.float64)
    up = warmup * steps
    rising = lr_initial + (lr_max - lr_initial) * step / up if up > 0 else np.zeros_like(step)
    falling = lr_max - (lr_max - lr_final) * (step - up) / ((1.0 - warmup) * steps)
    return np.where(step < up, rising, falling)


def _residual_wiring(net: nn.Module, x: torch.Tensor, act: Callable) -> torch.Tensor:
    """The reference's hidden layers: ``x1 = L1(x); x = L2(x1) + x1; x = L4(L3(x)) + x; x = L6(L5(x)) + x``, with
    ``act(layer, h)`` one activated layer of ``net`` (one network, or all members stacked)."""
    x1 = act(net.layer1, x)
    x = act(net.layer2, x1) + x1
    x = act(net.layer4, act(net.layer3, x)) + x
    return act(net.layer6, act(net.layer5, x)) + x


class SpectraLiftMLP(nn.Module):
    """The reference per-pixel network: (n, m) MSI spectra -> (n, C) HSI spectra."""

    def __init__(self, n_in: int, n_out: int, hidden: int = 64, generator: torch.Generator | None = None):
        super().__init__()
        # Layers are made on the meta device so that building one never draws from torch's global RNG.
        self.layer1 = nn.Linear(n_in, hidden, device="meta")
        self.layer2 = nn.Linear(hidden, hidden, device="meta")
        self.layer3 = nn.Linear(hidden, hidden, device="meta")
        self.layer4 = nn.Linear(hidden, hidden, device="meta")
        self.layer5 = nn.Linear(hidden, hidden, device="meta")
        self.layer6 = nn.Linear(hidden, hidden, device="meta")
        self.output_layer = nn.Linear(hidden, n_out, device="meta")
        self.to_empty(device="cpu")
        self.reset_parameters_keras(generator if generator is not None else torch.Generator().manual_seed(0))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The (n, hidden) output of the last hidden layer (the reference's residual wiring)."""
        def act(layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
            return F.leaky_relu(layer(h), LEAKY_SLOPE)

        return _residual_wiring(self, x, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.features(x))

    def reset_parameters_keras(self, generator: torch.Generator) -> None:
        """Glorot-uniform weights and zero biases (Keras Dense defaults), drawn from ``generator`` only."""
        with torch.no_grad():
            for layer in self.children():
                fan_out, fan_in = layer.weight.shape
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                layer.weight.uniform_(-limit, limit, generator=generator)
                layer.bias.zero_()


class _StackedLinear(nn.Module):
    """K independent dense layers on K stacks of pixels in one batched product: (K, n, in) -> (K, n, out)."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))  # (K, out, in)
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))  # (K, out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), h, self.weight.transpose(1, 2))


class SpectraLiftMembers(nn.Module):
    """K :class:`SpectraLiftMLP` networks trained as one: one forward pass, one loss, one optimiser step for all.

    The members share nothing but the step: member k's weights, gradients and Adam moments are its own, and the
    loss is the sum of the members' own losses, so training them together is training K independent networks with
    one step's bookkeeping. The 64-wide hidden layers are one batched product over the members (as fast as K
    products, with one call's overhead); the output layer is a product per member, since the batched product's
    weight gradient for C ~ 200 bands cost up to 1.6 x the separate products' on a CPU (docs/benchmarks.md).
    """

    _HIDDEN = ("layer1", "layer2", "layer3", "layer4", "layer5", "layer6")

    def __init__(self, members: list[SpectraLiftMLP]):
        super().__init__()
        for name in self._HIDDEN:
            setattr(self, name, _StackedLinear([getattr(member, name) for member in members]))
        self.outputs = nn.ModuleList([member.output_layer for member in members])

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The K members' (n, m) MSI spectra (equal n) -> their (n, C) predictions."""
        def act(layer: _StackedLinear, h: torch.Tensor) -> torch.Tensor:
            return F.leaky_relu(layer(h), LEAKY_SLOPE)

        return [output(h) for output, h in zip(self.outputs, _residual_wiring(self, torch.stack(xs), act))]

    def stacked_state(self) -> dict[str, np.ndarray]:
        """SpectraLiftMLP's state keys, each with a leading member axis."""
        state = {f"{name}.{p}": getattr(getattr(self, name), p) for name in self._HIDDEN for p in ("weight", "bias")}
        for p in ("weight", "bias"):
            state[f"output_layer.{p}"] = torch.stack([getattr(output, p) for output in self.outputs])
        return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


class ExactNetwork:
    """A fitted :class:`SpectraLiftMLP` for inference, every layer an exact product (:mod:`geolift.exact`).

    A pixel's spectrum is a function of that pixel's MSI values and the weights alone, to the last bit: it cannot
    change with the other pixels in the call, their number, the thread count, the BLAS kernel the CPU picks or the
    device. It agrees with the training network's float32 forward pass to float32 rounding (each layer's input and
    weights are rounded to 22-26 significant bits; the sums are exact in float64).

    An ensemble (a state with a leading member axis, :class:`SpectraLiftMembers`) runs each member's hidden layers
    and then one output product over all members' features side by side, with each member's output weights divided
    by K: the average of the members' outputs is then inside one exact sum, not a further rounding.
    """

    LAYERS = ("layer1", "layer2", "layer3", "layer4", "layer5", "layer6", "output_layer")

    def __init__(self, state: dict[str, np.ndarray], device: torch.device | str = "cpu",
                 output_layer: tuple[np.ndarray, np.ndarray] | None = None):
        """``output_layer``: a (C, K * hidden + m) weight and its (C,) bias that replace the (averaged) output layer
        and also take the pixel's m MSI values, as :func:`fold_msi_update` makes them (None: as trained)."""
        self.device = torch.device(device)
        stacked = np.ndim(state["layer1.weight"]) == 3
        members = [{k: v[i] for k, v in state.items()} for i in range(len(state["layer1.weight"]))] if stacked \
            else [state]
        self.msi_inputs = output_layer is not None
        final = output_layer if self.msi_inputs else averaged_output_layer(state)

        def exact(weight: np.ndarray, bias: np.ndarray) -> tuple[ExactMatrix, torch.Tensor]:
            return (ExactMatrix(np.asarray(weight, np.float64), self.device),  # biases as columns: band-first
                    torch.as_tensor(np.asarray(bias, np.float64)[:, None], device=self.device))

        self.trunks = [[exact(member[f"{name}.weight"], member[f"{name}.bias"]) for name in self.LAYERS[:-1]]
                       for member in members]
        self.output = exact(*final)
        self.output_bias = self.output[1].to(torch.float32)

    @property
    def _hidden(self) -> int:
        return self.trunks[0][0][0].matrix.shape[0]

    def workspace(self, n: int) -> torch.Tensor:
        """A float64 buffer for calls of up to ``n`` pixels (one per thread): the activations, their rounded
        copies and the output product live in it instead of in new tensors at every layer of every call."""
        bands = self.output[0].matrix.shape[0]
        return torch.empty((3 * self._hidden + self._rounded_rows() + self._joint_rows() + bands) * n,
                           dtype=torch.float64, device=self.device)

    def _rounded_rows(self) -> int:
        """Rows of the workspace's buffer for rounded layer inputs: the widest input, or for one network with the
        folded output layer its hidden features and the MSI values side by side."""
        inputs = self.trunks[0][0][0].matrix.shape[1]
        if len(self.trunks) == 1 and self.msi_inputs:
            return self._hidden + inputs
        return max(self._hidden, inputs)

    def _joint_rows(self) -> int:
        """Rows of the output layer's input buffer of an ensemble (one network uses the rounded-input buffer)."""
        return 0 if len(self.trunks) == 1 else self.output[0].matrix.shape[1]

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None, work: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """(n, m) MSI spectra (scaled units) -> (C, n) float32 HSI spectra, band-first, written into ``out`` if
        given (any strides, e.g. a band-first image's columns); the reference's wiring. Activations are kept
        band-first, (64, n): MKL's float64 GEMM runs about 20 % faster that way round. ``work``: a
        :meth:`workspace` of at least n pixels (the same bits without one, more allocation)."""
        n = x.shape[0]
        work = self.workspace(n) if work is None else work
        hidden = self._hidden
        parts, start = [], 0
        for rows in (hidden, hidden, hidden, self._rounded_rows(), self._joint_rows(), self.output[0].matrix.shape[0]):
            parts.append(work[start:start + rows * n])
            start += rows * n
        a, b, c, rounded, joint, product = parts

        def act(layer: tuple[ExactMatrix, torch.Tensor], h: torch.Tensor, into: torch.Tensor,
                scratch: torch.Tensor) -> torch.Tensor:
            """``layer`` of ``h`` into ``into``; ``scratch`` takes ``h`` rounded (``h`` itself if not needed again)."""
            weight, bias = layer
            rows, k = weight.matrix.shape
            result = weight.columns(h, into.view(rows, n), scratch[:k * n].view(k, n) if scratch.ndim == 1 else scratch)
            return F.leaky_relu_(result.add_(bias), LEAKY_SLOPE)  # bias added apart: no fused kernel

        def trunk(layers: list) -> torch.Tensor:
            """One member's last hidden features, in ``c``."""
            x1 = act(layers[0], x.T, a, rounded)
            h = act(layers[1], x1, b, rounded).add_(x1)
            h = act(layers[3], act(layers[2], h, c, rounded), a, c.view(hidden, n)).add_(h)
            return act(layers[5], act(layers[4], h, b, rounded), c, b.view(hidden, n)).add_(h)

        if len(self.trunks) == 1:
            h = trunk(self.trunks[0])
            if self.msi_inputs:  # the output layer also takes the pixel's MSI values (fold_msi_update)
                h = torch.cat([h, x.T], out=rounded.view(self._rounded_rows(), n))
        else:  # every member's features side by side, then one output product (see the class docstring)
            h = joint.view(self._joint_rows(), n)
            for i, layers in enumerate(self.trunks):
                h[i * hidden:(i + 1) * hidden].copy_(trunk(layers))
            if self.msi_inputs:
                h[len(self.trunks) * hidden:].copy_(x.T)
        final = self.output[0]
        product = final.columns(h, product.view(final.matrix.shape[0], n), h)
        if out is None:
            out = torch.empty(product.shape, dtype=torch.float32, device=self.device)
        return out.copy_(product).add_(self.output_bias)  # rounded to float32 once, then the bias (float32 work)


class _FlatKerasAdam:
    """Keras-style Adam over a module whose parameters and gradients live in two flat buffers.

    One flat buffer turns the per-step update into a handful of tensor ops instead of a loop over layers,
    which matters for a 2500-step full-batch fit on a CPU.
    """

    def __init__(self, net: nn.Module):
        params = list(net.parameters())
        self.flat = torch.cat([p.detach().reshape(-1) for p in params])
        self.grad = torch.zeros_like(self.flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.data = self.flat[offset:offset + n].view_as(p)
            p.grad = self.grad[offset:offset + n].view_as(p)  # autograd accumulates into this view in place
            offset += n
        self.m = torch.zeros_like(self.flat)
        self.v = torch.zeros_like(self.flat)

    def zero_grad(self) -> None:
        self.grad.zero_()

    @torch.no_grad()
    def step(self, step_size: float) -> None:
        """Apply one update; ``step_size`` is Keras' ``lr * sqrt(1 - beta2^t) / (1 - beta1^t)``."""
        g = self.grad
        self.m.lerp_(g, 1.0 - ADAM_BETA1)
        self.v.lerp_(g * g, 1.0 - ADAM_BETA2)
        self.flat.addcdiv_(self.m, self.v.sqrt().add_(ADAM_EPSILON), value=-step_size)


class _MeanAbsoluteError(torch.autograd.Function):
    """Mean absolute error whose gradient, sign(pred - target) / N, is prepared during the forward pass.

    Same value and gradient as ``F.l1_loss`` with fewer full-size temporaries, which are a large share of each
    step's cost for C ~ 200 output bands. Used once per step (no retain_graph), so backward may reuse the buffer.
    """

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = pred - target
        sign = torch.sign(diff)
        ctx.save_for_backward(sign)
        return torch.dot(diff.reshape(-1), sign.reshape(-1)) / diff.numel()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (sign,) = ctx.saved_tensors
        return sign.mul_(grad_loss / sign.numel()), None


class _StratifiedSampler:
    """Draws a fixed-size, stratified sample of training pixels for each step.

    Strata are k-means clusters of the (scaled) LR-MSI spectra, so rare materials are represented in every step
    in proportion to their share of the scene rather than by luck; each stratum gets its proportional quota
    (largest remainders), drawn with replacement. The cost of a step no longer grows with the scene.
    """

    def __init__(self, inputs: np.ndarray, size: int, seed: int, strata: int = SAMPLING_STRATA):
        self.rng = np.random.default_rng([seed, 0x5A3B])
        labels = _kmeans_labels(inputs, strata, self.rng)
        order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=strata)
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[counts > 0]
        counts = counts[counts > 0]
        exact = size * counts / counts.sum()
        quota = np.floor(exact).astype(np.int64)
        quota[np.argsort(quota - exact)[: size - int(quota.sum())]] += 1
        self.order, self.counts, self.quota = order, counts, quota
        self.owner = np.repeat(np.arange(len(counts)), quota)  # stratum of each slot of the sample

    def draw(self) -> np.ndarray:
        u = self.rng.random(len(self.owner))
        within = np.minimum((u * self.counts[self.owner]).astype(np.int64), self.counts[self.owner] - 1)
        return self.order[self.starts[self.owner] + within]


def _kmeans_labels(points: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 10,
                   fit_points: int = 20000) -> np.ndarray:
    """Cluster label of every point: k-means (k-means++ start) fitted on a subsample, a cheap stratification."""
    points = np.asarray(points, dtype=np.float64)
    fit = points if len(points) <= fit_points else points[rng.choice(len(points), fit_points, replace=False)]
    k = min(k, len(fit))
    centres = [fit[rng.integers(len(fit))]]
    closest = np.sum((fit - centres[0]) ** 2, axis=1)
    for _ in range(1, k):
        total = closest.sum()
        pick = rng.choice(len(fit), p=closest / total) if total > 0 else rng.integers(len(fit))
        centres.append(fit[pick])
        closest = np.minimum(closest, np.sum((fit - fit[pick]) ** 2, axis=1))
    centres = np.array(centres)

    def assign(data: np.ndarray) -> np.ndarray:
        d = (data**2).sum(1)[:, None] - 2 * data @ centres.T + (centres**2).sum(1)[None, :]
        return np.argmin(d, axis=1)

    for _ in range(iterations):
        labels = assign(fit)
        for j in range(k):
            members = fit[labels == j]
            if len(members):
                centres[j] = members.mean(axis=0)
    return np.concatenate([assign(points[i:i + 262144]) for i in range(0, len(points), 262144)])


#: Sampled training (``max_train_pixels``) on a scene with more valid pixels than this draws its samples from a
#: stratified pool of this many pixels (52 MB for 200 bands) instead of from every pixel (0.8 GB at 1000 x 1000).
TRAINING_POOL_PIXELS = 65536

_COLUMN_CHUNK = 65536


def _finite_columns(pixels: np.ndarray) -> np.ndarray:
    """(n,) bool: columns of a (C, n) array with every band finite, computed in chunks (no (C, n) temporary)."""
    out = np.empty(pixels.shape[1], dtype=bool)
    for a in range(0, pixels.shape[1], _COLUMN_CHUNK):
        out[a:a + _COLUMN_CHUNK] = np.isfinite(pixels[:, a:a + _COLUMN_CHUNK]).all(axis=0)
    return out


def _column_range(pixels: np.ndarray, columns: np.ndarray) -> tuple[float, float]:
    """(min, max) over the given columns of a (C, n) array, in chunks."""
    lo, hi = math.inf, -math.inf
    for a in range(0, columns.size, _COLUMN_CHUNK):
        chunk = columns[a:a + _COLUMN_CHUNK]
        contiguous = chunk[-1] - chunk[0] == chunk.size - 1
        block = pixels[:, chunk[0]:chunk[-1] + 1] if contiguous else pixels[:, chunk]
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return lo, hi


def _stratified_pool(pixels: np.ndarray, valid_index: np.ndarray, R: np.ndarray, lo: float, hi: float,
                     size: int, seed: int) -> np.ndarray:
    """``size`` of the valid columns, drawn without replacement in proportion to k-means strata of the LR-MSI.

    The strata are those :class:`_StratifiedSampler` uses (k-means of the scaled LR-MSI spectra, fitted on a
    subsample, every pixel assigned), so rare materials keep their share. Returned sorted (cache-friendly copy).
    """
    rng = np.random.default_rng([seed, 0x9001])
    msi = np.empty((valid_index.size, R.shape[0]), dtype=np.float32)  # only to form strata: float32 is plenty
    response = R.astype(pixels.dtype if pixels.dtype.kind == "f" else np.float64)
    offset = (lo * R.sum(axis=1))[:, None]
    for a in range(0, valid_index.size, _COLUMN_CHUNK):
        columns = valid_index[a:a + _COLUMN_CHUNK]
        contiguous = columns[-1] - columns[0] == columns.size - 1
        block = pixels[:, columns[0]:columns[-1] + 1] if contiguous else pixels[:, columns]
        msi[a:a + _COLUMN_CHUNK] = ((response @ block - offset) / (hi - lo)).T
    labels = _kmeans_labels(msi, SAMPLING_STRATA, rng)
    counts = np.bincount(labels, minlength=SAMPLING_STRATA)
    exact = size * counts / counts.sum()
    quota = np.minimum(np.floor(exact).astype(np.int64), counts)
    spare = size - int(quota.sum())
    for j in np.argsort(quota - exact, kind="stable"):  # largest remainders first, never beyond a stratum's size
        if spare <= 0:
            break
        if quota[j] < counts[j]:
            quota[j] += 1
            spare -= 1
    chosen = [rng.choice(np.flatnonzero(labels == j), quota[j], replace=False) for j in range(len(counts)) if quota[j]]
    return np.sort(valid_index[np.concatenate(chosen)])


def _scaled_pool(pixels: np.ndarray, pool: np.ndarray, R: np.ndarray, lo: float, hi: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(target, inputs) of the pool's pixels in scaled units, built in chunks: target float32 (it becomes a float32
    tensor anyway), arithmetic in float64 per chunk."""
    target = np.empty((pool.size, pixels.shape[0]), dtype=np.float32)
    inputs = np.empty((pool.size, R.shape[0]))
    for a in range(0, pool.size, 8192):
        chunk = (pixels[:, pool[a:a + 8192]].T.astype(np.float64) - lo) / (hi - lo)
        target[a:a + 8192] = chunk
        inputs[a:a + 8192] = chunk @ R.T
    return target, inputs


def _part_of(progress: Progress | None, offset: int, total: int) -> Progress | None:
    """``progress`` for one part of a fit that counts its own steps (the members, then their student): one bar over
    the fit's ``total`` steps instead of two that each start again at 0."""
    if progress is None:
        return None
    return lambda done, _, stage: progress(offset + done, total, stage)


def _adam_step_sizes(lr: np.ndarray) -> list[float]:
    t = np.arange(1, len(lr) + 1, dtype=np.float64)
    return (lr * np.sqrt(1.0 - ADAM_BETA2 ** t) / (1.0 - ADAM_BETA1 ** t)).tolist()


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch intra-op threads inside the block, then restore the previous setting (None: no change)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"Unknown device {device!r}; use 'cpu', 'cuda' or 'auto'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"Device {device!r} was requested but CUDA is not available on this machine; "
                         "use device='cpu' or device='auto'.")
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"Unsupported device {device!r}; use 'cpu', 'cuda' or 'auto'.")
    return dev


class SpectraLift:
    """Fit the SpectraLift mapping on an LR-HSI and a response matrix, then predict HSI spectra from MSI pixels.

    Units: inputs may be in any consistent units (reflectance 0-1, or scaled integers such as reflectance*10000);
    predictions come back in the LR-HSI's units. Internally one affine map sends ``[lo, hi]`` to ``[0, 1]`` as the
    reference expects, where ``(lo, hi)`` is ``value_range`` if given, else the min/max of the valid LR-HSI values.
    The same map applied to an MSI band with response row ``r`` is ``(msi - lo*sum(r)) / (hi - lo)``, exact for any
    rows (``lo*sum(r)`` is the MSI value of a flat ``lo`` spectrum).

    Outputs are clipped to ``[0, 1]`` in scaled units, i.e. ``[lo, hi]`` in user units, as the reference does:
    the network only ever saw targets inside that range, so values outside it are extrapolation, not signal.
    Pass ``value_range`` (e.g. ``(0, 10000)``) to clip to a physical range instead of the LR-HSI's data range.
    The default recipe clips to ``[0, hi]`` instead (``nonnegative``, :attr:`output_range`) and moves each
    prediction towards agreement with its MSI pixel (``msi_update``, :func:`msi_update_gain`).

    Non-finite pixels (any band NaN/inf) of the LR-HSI are left out of training; such pixels of the MSI come out
    NaN in every band. Fitting is deterministic on a given machine and torch thread count: the same seed and data
    give the same weights (another CPU may train to slightly different ones). Prediction is exact by construction
    (:class:`ExactNetwork`): a pixel's result depends on its own MSI values and the weights only, so predicting an
    image block by block, pixel by pixel or whole, on any thread count, CPU kernel or device, gives the same bits.

    ``num_threads`` sets torch's CPU threads while fitting and predicting (restored afterwards); None leaves
    torch's setting alone. One thread is often fastest for small fits and on busy machines, where threads that
    wait on each other stall; Dask workers running one model each should use 1.

    ``preset`` picks the recipe (:data:`PRESETS`; None = :data:`DEFAULT_PRESET`, ``"geolift"``); any parameter
    given explicitly overrides the preset's value. ``max_train_pixels`` caps the pixels per training step
    (stratified sample; None = always full batch). ``consistency`` says whether the recipe includes the consistency
    step (:mod:`geolift.refine`): then :meth:`fit` keeps a reference to the LR-HSI and :meth:`predict` corrects the
    network's output with it, exactly as ``geolift fuse`` does for the same arrays, so every entry point gives the
    same result. The faithful ``spectralift`` preset has no such step: its prediction is the network's alone.
    ``members`` > 1 (the default recipe: 3) trains that many networks side by side (:class:`SpectraLiftMembers`);
    member k is the fit seed ``seed + k * MEMBER_SEED_STRIDE`` would give. With ``distill`` > 0 one student network
    then learns their mean and predicts alone (:meth:`fit`'s ``hr_msi``): fine-tuned from member 0, or, with
    ``student_hidden`` narrower than the members, trained afresh at that width (half the inference at 32); with
    ``distill=0`` all members predict and their mean is formed inside one exact product (:class:`ExactNetwork`).
    """

    def __init__(self, *, steps: int | None = None, hidden: int | None = None, lr_initial: float | None = None,
                 lr_max: float | None = None, lr_final: float | None = None, warmup: float | None = None,
                 seed: int = 0, device: str = "cpu", value_range: tuple[float, float] | None = None,
                 preset: str | None = None, chunk_pixels: int = 65536, min_pixels: int = MIN_TRAINING_PIXELS,
                 num_threads: int | None = None, max_train_pixels: int | None | str = "preset",
                 consistency: bool | None = None, brightness_jitter: float | None = None,
                 snapshot_fraction: float | None = None, nonnegative: bool | None = None,
                 msi_update: bool | None = None, members: int | None = None, distill: float | None = None,
                 student_hidden: int | None | str = "preset"):
        preset = DEFAULT_PRESET if preset is None else preset
        if preset not in PRESETS:
            raise ModelError(f"Unknown preset {preset!r}; choose one of: {', '.join(sorted(PRESETS))}.")
        recipe = PRESETS[preset]
        steps = recipe["steps"] if steps is None else steps
        hidden = recipe["hidden"] if hidden is None else hidden
        lr_initial = recipe["lr_initial"] if lr_initial is None else lr_initial
        lr_max = recipe["lr_max"] if lr_max is None else lr_max
        lr_final = recipe["lr_final"] if lr_final is None else lr_final
        warmup = recipe["warmup"] if warmup is None else warmup
        brightness_jitter = recipe["brightness_jitter"] if brightness_jitter is None else float(brightness_jitter)
        snapshot_fraction = recipe["snapshot_fraction"] if snapshot_fraction is None else float(snapshot_fraction)
        members = recipe["members"] if members is None else members
        distill = recipe["distill"] if distill is None else float(distill)
        student_hidden = recipe["student_hidden"] if student_hidden == "preset" else student_hidden
        if student_hidden is not None and int(student_hidden) < 1:
            raise ModelError(f"student_hidden must be at least 1 (or None: the members' width), got {student_hidden}.")
        if not 0.0 <= brightness_jitter < 1.0:
            raise ModelError(f"brightness_jitter must be in [0, 1), got {brightness_jitter}.")
        if not 0.0 <= snapshot_fraction <= 1.0:
            raise ModelError(f"snapshot_fraction must be in [0, 1], got {snapshot_fraction}.")
        max_train_pixels = recipe["max_train_pixels"] if max_train_pixels == "preset" else max_train_pixels
        if max_train_pixels is not None and int(max_train_pixels) < 1:
            raise ModelError(f"max_train_pixels must be at least 1 (or None for full batch), got {max_train_pixels}.")
        if int(steps) < 1:
            raise ModelError(f"steps must be at least 1, got {steps}.")
        if int(hidden) < 1:
            raise ModelError(f"hidden must be at least 1, got {hidden}.")
        if int(members) < 1:
            raise ModelError(f"members must be at least 1, got {members}.")
        if not 0.0 <= distill <= 1.0:
            raise ModelError(f"distill must be in [0, 1] (the student's steps as a share of steps), got {distill}.")
        if not 0.0 <= float(warmup) < 1.0:
            raise ModelError(f"warmup must be in [0, 1), got {warmup}.")
        if min(lr_initial, lr_max, lr_final) < 0:
            raise ModelError("Learning rates must not be negative.")
        if num_threads is not None and int(num_threads) < 1:
            raise ModelError(f"num_threads must be at least 1 (or None), got {num_threads}.")
        if int(chunk_pixels) < 1:
            raise ModelError(f"chunk_pixels must be at least 1, got {chunk_pixels}.")
        self.preset = preset
        self.steps = int(steps)
        self.hidden = int(hidden)
        self.lr_initial, self.lr_max, self.lr_final = float(lr_initial), float(lr_max), float(lr_final)
        self.warmup = float(warmup)
        self.seed = int(seed)
        self.device = str(device)
        self.value_range = None if value_range is None else self._check_range(value_range)
        self.chunk_pixels = int(chunk_pixels)
        self.min_pixels = max(1, int(min_pixels))
        self.num_threads = None if num_threads is None else int(num_threads)
        self.max_train_pixels = None if max_train_pixels is None else int(max_train_pixels)
        #: whether the recipe includes geolift.refine's consistency step (predict runs it; the file pipeline, window
        #: by window)
        self.consistency = bool(recipe["consistency"] if consistency is None else consistency)
        self.brightness_jitter = float(brightness_jitter)
        self.snapshot_fraction = float(snapshot_fraction)
        #: whether outputs are floored at 0 (reflectance and radiance cannot be negative; see output_range)
        self.nonnegative = bool(recipe["nonnegative"] if nonnegative is None else nonnegative)
        #: whether each prediction is moved to agree with its own MSI pixel (see msi_update_gain)
        self.msi_update = bool(recipe["msi_update"] if msi_update is None else msi_update)
        #: networks trained side by side (SpectraLiftMembers) whose outputs are averaged; 1: one network
        self.members = int(members)
        #: the training steps of the one network that learns the ensemble's mean on the HR-MSI's pixels, as a share
        #: of ``steps`` (0: no student; predict then runs every member)
        self.distill = float(distill)
        #: the student's width (None: the members' ``hidden``; it then starts from member 0's weights, else afresh)
        self.student_hidden = None if student_hidden is None else int(student_hidden)
        _resolve_device(self.device)  # fail early on an unusable device

        # Set by fit().
        self.n_bands_in: int | None = None
        self.n_bands_out: int | None = None
        self.history: list[float] = []  # training MAE per step, in scaled [0, 1] units
        self.fit_seconds: float | None = None
        self.data_range: tuple[float, float] | None = None  # (lo, hi) actually used for scaling
        self.n_train_pixels: int | None = None
        self._state: dict[str, np.ndarray] | None = None  # fitted weights, CPU numpy (what pickle ships)
        self._msi_offset: np.ndarray | None = None  # lo * rowsum(R), per MSI band
        self._net: ExactNetwork | None = None  # inference network, rebuilt lazily, never pickled
        self._folded_output: tuple[np.ndarray, np.ndarray] | None = None  # output layer + MSI update (fold_msi_update)
        self._lr_hsi: np.ndarray | None = None  # what fit() saw, for the consistency step (a reference, no copy)
        self._response: np.ndarray | None = None
        #: (inputs, targets, R): the training pairs and response, kept until the student is trained
        self._pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._msi_gain: np.ndarray | None = None  # the MSI update's gain, folded again into the student

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_range(value_range) -> tuple[float, float]:
        try:
            lo, hi = (float(v) for v in value_range)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"value_range must be two numbers (lo, hi), got {value_range!r}.") from exc
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ModelError(f"value_range must be finite with hi > lo, got ({lo}, {hi}).")
        return lo, hi

    @property
    def output_range(self) -> tuple[float, float] | None:
        """(lo, hi) that predictions are clipped to, in user units (None before :meth:`fit`): :attr:`data_range`,
        or ``(0, hi)`` when the recipe is ``nonnegative`` and no ``value_range`` was given (a range the caller
        states is the physical one and is kept)."""
        if self.data_range is None:
            return None
        lo, hi = self.data_range
        floored = self.nonnegative and self.value_range is None and hi > 0.0
        return (0.0, hi) if floored else (lo, hi)

    @property
    def is_fitted(self) -> bool:
        return self._state is not None

    @property
    def distills(self) -> bool:
        """Whether the recipe trains one network on the ensemble's mean (``members`` > 1 and ``distill`` > 0)."""
        return self.members > 1 and self.distill > 0

    @property
    def student_steps(self) -> int:
        """The student's training steps: ``distill`` of ``steps``, at least one (0 without a student)."""
        return max(1, round(self.distill * self.steps)) if self.distills else 0

    @property
    def _trained_networks(self) -> int:
        """Networks in the fitted weights: ``members``, or 1 once a student has replaced them."""
        return 1 if np.ndim(self._state["layer1.weight"]) == 2 else self.members

    @property
    def distilled(self) -> bool:
        """Whether the fitted weights are an ensemble's student (one network)."""
        return self.is_fitted and self.distills and self._trained_networks == 1

    @property
    def awaiting_student(self) -> bool:
        """Fitted, but the student still needs HR-MSI pixels: the first :meth:`predict` call trains it."""
        return self.is_fitted and self.distills and not self.distilled and self._pairs is not None

    def learning_rates(self) -> np.ndarray:
        """The learning rate used at each of the ``steps`` training steps."""
        return learning_rate_schedule(self.steps, self.lr_initial, self.lr_max, self.lr_final, self.warmup)

    def _new_network(self, n_in: int, n_out: int, generator: torch.Generator | None = None) -> SpectraLiftMLP:
        return SpectraLiftMLP(n_in, n_out, self.hidden, generator)

    def network(self, member: int | None = None) -> SpectraLiftMLP:
        """The fitted torch network (as trained, float32) on the chosen device; with ``members`` > 1, member
        ``member`` of the ensemble (its output is the members' mean, which no one torch network gives)."""
        self._check_fitted()
        members = self._trained_networks
        if members > 1 and member is None:
            raise ModelError(f"This model is an ensemble of {members} networks; network(member=k) gives one.")
        if member is not None and not 0 <= member < members:
            raise ModelError(f"member must be in [0, {members}), got {member}.")
        state = self._state if members == 1 else {k: v[member] for k, v in self._state.items()}
        net = SpectraLiftMLP(self.n_bands_in, self.n_bands_out, int(np.shape(state["layer1.weight"])[0]))
        net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        return net.eval().to(_resolve_device(self.device))

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ModelError("The model is not fitted yet; call fit(lr_hsi, R) before predicting.")

    def _inference_network(self) -> ExactNetwork:
        """The network :meth:`predict` runs (exact products, see :class:`ExactNetwork`), built on first use."""
        self._check_fitted()
        dev = _resolve_device(self.device)
        if self._net is None or self._net.device != dev:
            self._net = ExactNetwork(self._state, dev, self._folded_output)
        return self._net

    # ------------------------------------------------------------------ fit
    def fit(self, lr_hsi: np.ndarray, R: np.ndarray, progress: Progress | None = None, *,
            keep_lr_hsi: bool = True, hr_msi: np.ndarray | None = None,
            hr_pixels: np.ndarray | None = None) -> SpectraLift:
        """Train on an LR-HSI ``(C, h, w)`` and a response matrix ``R`` ``(m, C)``; returns ``self``.

        With the consistency step in the recipe, the model keeps a reference to ``lr_hsi`` (no copy) for
        :meth:`predict`; ``keep_lr_hsi=False`` does not (the file pipeline, which runs the step itself window by
        window and frees the cube early).

        A recipe with a student (:attr:`distills`) trains it on the ensemble's mean at HR-MSI pixels: those of
        ``hr_msi`` (an (m, H, W) cube, the same that will be predicted) on the :func:`distillation_stride` grid,
        or ``hr_pixels`` ((n, m), already on it); given neither, the first :meth:`predict` call's HR-MSI.
        """
        t0 = time.perf_counter()
        lr_hsi = np.asarray(lr_hsi)
        R = np.asarray(R, dtype=np.float64)
        if lr_hsi.ndim != 3:
            raise ModelError(f"The LR-HSI must be a (bands, rows, cols) array, got shape {lr_hsi.shape}.")
        if R.ndim != 2:
            raise ModelError(f"The response matrix R must be 2-D (MSI bands x HSI bands), got shape {R.shape}.")
        n_bands = lr_hsi.shape[0]
        if R.shape[1] != n_bands or R.shape[0] < 1:
            raise ModelError(f"The response matrix R has shape {R.shape} but the LR-HSI has {n_bands} bands; "
                             f"R must be (MSI bands, {n_bands}).")
        if not np.all(np.isfinite(R)):
            raise ModelError("The response matrix R contains NaN or infinite values.")
        if hr_msi is not None and (np.ndim(hr_msi) != 3 or np.shape(hr_msi)[0] != R.shape[0]):
            raise ModelError(f"hr_msi must be a (bands, rows, cols) array with one band per row of R ({R.shape[0]}), "
                             f"got shape {np.shape(hr_msi)}.")
        dev = _resolve_device(self.device)

        # No float64 copy of the whole scene: the pixels stay in the caller's array ((C, n) view), validity and the
        # value range are found in column chunks, and only the pixels that will be trained on are copied.
        pixels = lr_hsi.reshape(n_bands, -1)  # (C, n)
        valid = _finite_columns(pixels)
        valid_index = np.flatnonzero(valid)
        n_valid = int(valid_index.size)
        if n_valid == 0:
            raise ModelError("The LR-HSI has no valid pixels (every pixel has a NaN or infinite band).")
        if n_valid < self.min_pixels:
            raise ModelError(f"The LR-HSI has only {n_valid} valid pixels; at least {self.min_pixels} are needed "
                             "to learn a spectral mapping.")
        if self.value_range is not None:
            lo, hi = self.value_range
        else:
            lo, hi = _column_range(pixels, valid_index)
            if not hi > lo:
                raise ModelError(f"The LR-HSI has the same value ({lo}) everywhere; there is no spectrum to learn.")
        if self.max_train_pixels is not None and n_valid > max(self.max_train_pixels, TRAINING_POOL_PIXELS):
            # Sampled training sees at most steps x max_train_pixels draws; a stratified pool of the scene's pixels
            # (strata from all of them) serves those draws as well as the whole scene would, at a fixed cost.
            pool = _stratified_pool(pixels, valid_index, R, lo, hi, TRAINING_POOL_PIXELS, self.seed)
            target, inputs = _scaled_pool(pixels, pool, R, lo, hi)
        else:
            target = pixels[:, valid_index].T.astype(np.float64)  # (n_train, C)
            target -= lo  # in place, the same arithmetic as (hsi - lo) / (hi - lo): the reference trains on [0, 1]
            target /= hi - lo
            inputs = target @ R.T  # the synthetic LR-MSI, formed in scaled units

        student_now = self.distills and (hr_msi is not None or hr_pixels is not None)
        total = self.steps + (self.student_steps if student_now else 0)
        with torch_threads(self.num_threads):
            self._state, self.history = self._train(inputs, target, dev, _part_of(progress, 0, total))
            self._msi_gain = msi_update_gain(target, R) if self.msi_update else None
            self._folded_output = None if self._msi_gain is None else fold_msi_update(self._state, R, self._msi_gain)
        self._net = None
        self.n_bands_in, self.n_bands_out = int(R.shape[0]), int(n_bands)
        self.data_range = (lo, hi)
        if self.output_range[0] == 0.0 and lo < 0.0:
            log.info("The LR-HSI has values down to %.4g; predictions are clipped at 0 (the %s preset: reflectance "
                     "and radiance are never negative; nonnegative=False keeps the LR-HSI's range).", lo, self.preset)
        self._msi_offset = (lo * R.sum(axis=1)).astype(np.float64)
        self.n_train_pixels = n_valid
        keep = keep_lr_hsi and self.consistency
        self._lr_hsi, self._response = (lr_hsi, R) if keep else (None, None)
        self._pairs = None
        if self.distills:
            self._pairs = (inputs.astype(np.float32), target.astype(np.float32), R)
            if student_now:
                self._train_student(distillation_pixels(hr_msi) if hr_pixels is None else hr_pixels,
                                    _part_of(progress, self.steps, total))
        self.fit_seconds = time.perf_counter() - t0
        log.debug("SpectraLift fitted on %d pixels (%d -> %d bands) in %.2f s, final MAE %.5f (scaled units)",
                  n_valid, self.n_bands_in, self.n_bands_out, self.fit_seconds, self.history[-1])
        return self

    def _train(self, inputs: np.ndarray, target: np.ndarray, dev: torch.device,
               progress: Progress | None, start: dict[str, np.ndarray] | None = None
               ) -> tuple[dict[str, np.ndarray], list[float]]:
        """Full-batch training of a freshly initialised network (or :attr:`members` networks side by side; or one
        network from the weights ``start``); returns its weights (with a leading member axis for an ensemble) and
        the loss per step (the members' mean)."""
        seeds = [self.seed + k * MEMBER_SEED_STRIDE for k in range(self.members)]
        nets = [self._new_network(inputs.shape[1], target.shape[1], torch.Generator().manual_seed(s)) for s in seeds]
        if start is not None:
            nets[0].load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in start.items()})
        net = (nets[0] if self.members == 1 else SpectraLiftMembers(nets)).to(dev).train()
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).to(dev)  # no copy if float32 already
        y = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)).to(dev)

        optimizer = _FlatKerasAdam(net)
        step_sizes = _adam_step_sizes(self.learning_rates())
        report_every = max(1, self.steps // 100)
        # Kept on the device, one transfer at the end. Preallocated: appending one small tensor per step pinned the
        # freed per-step buffers in the C heap (RSS grew ~0.6 MB per step at 2048 sampled px: +1.6 GB per fit).
        losses = torch.empty(self.steps, device=dev)
        samplers = jitters = None
        if self.max_train_pixels is not None and inputs.shape[0] > self.max_train_pixels:
            samplers = [_StratifiedSampler(inputs, self.max_train_pixels, s) for s in seeds]
        if self.brightness_jitter > 0:
            jitters = [torch.Generator().manual_seed(s + 0x7A11) for s in seeds]  # own streams: init stays as without
        n_snapshots = int(round(self.snapshot_fraction * self.steps))
        snapshot_sum = torch.zeros_like(optimizer.flat) if n_snapshots > 0 else None
        if progress is not None:
            progress(0, self.steps, "train")
        for step, step_size in enumerate(step_sizes, start=1):
            optimizer.zero_grad()
            if samplers is None and jitters is None and self.members == 1:
                loss = _MeanAbsoluteError.apply(net(x), y)
            else:
                batches = [self._training_batch(x, y, dev, samplers[k] if samplers else None,
                                                jitters[k] if jitters else None) for k in range(self.members)]
                if self.members == 1:
                    loss = _MeanAbsoluteError.apply(net(batches[0][0]), batches[0][1])
                else:  # the sum of the members' own losses: each member gets its own gradient
                    predictions = net([b[0] for b in batches])
                    loss = sum(_MeanAbsoluteError.apply(p, b[1]) for p, b in zip(predictions, batches))
            loss.backward()
            optimizer.step(step_size)
            if snapshot_sum is not None and step > self.steps - n_snapshots:
                snapshot_sum.add_(optimizer.flat)
            losses[step - 1] = loss.detach() / self.members
            if progress is not None and (step % report_every == 0 or step == self.steps):
                progress(step, self.steps, "train")

        if snapshot_sum is not None:
            with torch.no_grad():
                optimizer.flat.copy_(snapshot_sum / n_snapshots)  # the parameters are views of this buffer
        history = losses.cpu().tolist()
        if self.members == 1:
            state = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
        else:
            state = net.stacked_state()
        return state, history

    def _train_student(self, hr_pixels: np.ndarray, progress: Progress | None = None) -> None:
        """Replace the ensemble by one network trained on the LR pairs plus the ensemble's mean at ``hr_pixels``
        ((n, m) in user units; non-finite ones are left out), then fold the MSI update into it again.

        Why: the members' mean is better than any one network (HyperBench's zoo: SAM -10.9 % -> -15.2 % against the
        faithful preset with three members), but predicting with K networks costs K times the inference. A student
        that learns the mean where it will be used - the HR-MSI's own pixels, purer and darker than any LR pixel -
        keeps most of the gain at one network's cost (docs/benchmarks.md, "Stop 29"); a narrower one
        (``student_hidden``) costs half that to predict, and is trained afresh ("Stop 31"). The teacher's outputs are
        exact products (:class:`ExactNetwork`), so they do not depend on how many pixels are sampled.
        """
        pixels = np.asarray(hr_pixels, dtype=np.float64)
        if pixels.ndim != 2 or pixels.shape[1] != self.n_bands_in:
            raise ModelError(f"HR pixels for the student must be an (n, {self.n_bands_in}) array, got {pixels.shape}.")
        lo, hi = self.data_range
        pixels = pixels[np.all(np.isfinite(pixels), axis=1)]
        inputs, target, R = self._pairs
        scaled = (pixels - self._msi_offset) / (hi - lo)
        dev = _resolve_device(self.device)
        started = time.perf_counter()
        with torch_threads(self.num_threads), torch.inference_mode():
            teacher = ExactNetwork(self._state, dev)  # the members' mean, before the MSI update
            taught = np.empty((teacher.output[0].matrix.shape[0], scaled.shape[0]), np.float32)
            for a in range(0, scaled.shape[0], _INFERENCE_PIXELS):
                b = min(scaled.shape[0], a + _INFERENCE_PIXELS)
                teacher(torch.from_numpy(scaled[a:b]).to(dev), torch.from_numpy(taught[:, a:b]))
        student = copy.copy(self)  # the recipe's warm-up share, jitter and snapshots, for one network
        student.members, student.steps = 1, self.student_steps
        student.seed = self.seed + self.members * MEMBER_SEED_STRIDE  # the next member's seed: its sample, jitter
        first = None
        if self.student_hidden in (None, self.hidden):  # fine-tunes member 0
            student.lr_initial, student.lr_max = STUDENT_LEARNING_RATES
            student.max_train_pixels = STUDENT_TRAIN_PIXELS if self.max_train_pixels is None \
                else min(self.max_train_pixels, STUDENT_TRAIN_PIXELS)
            first = {name: value[0] for name, value in self._state.items()}
        else:  # another width: a fresh network on the members' own schedule
            student.hidden = self.student_hidden
        with torch_threads(self.num_threads):
            state, history = student._train(np.concatenate([inputs, scaled]),  # float64: the sampler's strata
                                            np.concatenate([target, taught.T]), dev,  # float32, as _train uses it
                                            progress, start=first)
        self._state, self.history = state, self.history + history
        self._folded_output = None if self._msi_gain is None else fold_msi_update(state, R, self._msi_gain)
        self._net, self._pairs = None, None
        log.debug("Student of %d members trained on %d LR pairs and %d HR pixels in %.2f s.", self.members,
                  inputs.shape[0], scaled.shape[0], time.perf_counter() - started)

    def _training_batch(self, x: torch.Tensor, y: torch.Tensor, dev: torch.device,
                        sampler: _StratifiedSampler | None, jitter: torch.Generator | None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's (inputs, targets): the sampler's draw (or every pixel), each pair scaled by its own jitter."""
        xb, yb = x, y
        if sampler is not None:
            index = torch.from_numpy(sampler.draw()).to(dev)
            xb, yb = x.index_select(0, index), y.index_select(0, index)
        if jitter is not None:
            scale = torch.empty(xb.shape[0], 1).uniform_(1.0 - self.brightness_jitter,
                                                         1.0 + self.brightness_jitter, generator=jitter)
            scale = scale.to(dev)
            xb, yb = xb * scale, yb * scale
        return xb, yb

    # ------------------------------------------------------------------ predict
    def predict(self, hr_msi: np.ndarray, progress: Progress | None = None, *, ratio: float | None = None,
                grid=None, consistency: bool | None = None) -> np.ndarray:
        """Predict the HSI cube ``(C, H, W)`` float32 for an MSI cube ``(m, H, W)``; non-finite pixels give NaN.

        With the recipe's consistency step (``consistency`` None: the recipe's; False: the network alone), the
        network's output is corrected so that, blurred and downsampled, it agrees with the LR-HSI given to
        :meth:`fit` (:func:`geolift.refine.refine`, the same steps as ``geolift fuse``). The HR-MSI must then cover
        the LR-HSI's area: ``ratio`` (HR pixels per LR pixel, same origin) follows from the shapes when both axes
        agree, else give it, or ``grid`` (a :class:`geolift.blur.GridPair`) for grids that do not nest.
        """
        self._check_fitted()
        hr_msi = np.asarray(hr_msi)
        wanted = self.consistency if consistency is None else bool(consistency)
        if wanted and self._lr_hsi is None and consistency:
            raise ModelError("The consistency step needs the LR-HSI fit() saw; this model was fitted without "
                             "keeping it (keep_lr_hsi=False), or its recipe has no such step.")
        corrects = wanted and self._lr_hsi is not None
        shaped = hr_msi.ndim == 3 and hr_msi.shape[0] == self.n_bands_in  # else: _predict_network's error below
        if corrects and shaped and grid is None and ratio is None:
            ratio = self._ratio_from_shapes(hr_msi.shape[1:])  # before the student: a refused call trains nothing
        if self.awaiting_student and shaped:
            if corrects:  # the image covers the LR-HSI's area: the scene itself
                log.info("Training the ensemble's one-network student on this HR-MSI's pixels (the first predict "
                         "call's image; pass hr_msi to fit to choose it).")
            else:
                self._warn_lazy_student(f"this call's {hr_msi.shape[1]} x {hr_msi.shape[2]} px image")
            self._train_student(distillation_pixels(hr_msi))
        x0 = self._predict_network(hr_msi, progress)
        if not wanted:
            return x0
        if self._lr_hsi is None:
            return self._skip_consistency(x0, "the model was fitted with keep_lr_hsi=False")
        from geolift import refine

        try:
            x, _, _ = refine.refine(x0, self._lr_hsi, hr_msi, self._response, ratio, grid=grid,
                                    value_range=self.output_range)
        except ModelError as exc:
            return self._skip_consistency(x0, str(exc).rstrip("."))
        return x

    @staticmethod
    def _warn_lazy_student(what: str) -> None:
        """Say that the student learns from ``what`` alone: a first call that is one tile of a larger image would
        teach it that tile's materials only, and every later call would use it."""
        warn(f"The ensemble's one-network student is learning the members' mean from {what} alone (the first "
             "prediction's input); if that is one tile of a larger image, pass the whole HR-MSI to "
             "fit(..., hr_msi=...) so that the student learns the scene.", stacklevel=3)

    def _ratio_from_shapes(self, hr_shape: tuple[int, int]) -> float:
        lr_shape = self._lr_hsi.shape[1:]
        ratios = (hr_shape[0] / lr_shape[0], hr_shape[1] / lr_shape[1])
        if abs(ratios[0] - ratios[1]) > 1e-9 * max(ratios) or ratios[0] <= 1.0:
            raise ModelError(f"The HR-MSI ({hr_shape[0]} x {hr_shape[1]} px) is not the LR-HSI's area at a finer "
                             f"resolution ({lr_shape[0]} x {lr_shape[1]} px, ratios {ratios[0]:g} and {ratios[1]:g}); "
                             "give ratio= or grid= to predict, or consistency=False for the network alone.")
        return ratios[0]

    @staticmethod
    def _skip_consistency(x0: np.ndarray, reason: str) -> np.ndarray:
        warn(f"Consistency step skipped: {reason}; the output is the network's prediction alone.", stacklevel=3)
        return x0

    def _predict_network(self, hr_msi: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """The network's prediction ``(C, H, W)`` float32 for ``(m, H, W)``: per pixel, exact (see the class)."""
        self._check_fitted()
        hr_msi = np.asarray(hr_msi)
        if hr_msi.ndim != 3:
            raise ModelError(f"The HR-MSI must be a (bands, rows, cols) array, got shape {hr_msi.shape}.")
        if hr_msi.shape[0] != self.n_bands_in:
            raise ModelError(f"The HR-MSI has {hr_msi.shape[0]} bands but the model was fitted with "
                             f"{self.n_bands_in} MSI bands (rows of R).")
        _, rows, cols = hr_msi.shape
        flat_in = hr_msi.reshape(self.n_bands_in, rows * cols)
        out = np.empty((self.n_bands_out, rows * cols), dtype=np.float32)

        self._predict_chunks(lambda a, b: flat_in[:, a:b].T, lambda a, b: out[:, a:b], rows * cols, progress)
        return out.reshape(self.n_bands_out, rows, cols)

    def predict_pixels(self, X: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """Predict HSI spectra ``(n, C)`` float32 for MSI pixels ``(n, m)``; non-finite rows give NaN rows."""
        self._check_fitted()
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_bands_in:
            raise ModelError(f"Pixels must be an (n, {self.n_bands_in}) array of MSI spectra, got shape {X.shape}.")
        if self.awaiting_student:  # these pixels stand for the image (at most DISTILL_PIXELS of them, evenly spaced)
            self._warn_lazy_student(f"this call's {X.shape[0]} pixels")
            self._train_student(X[::max(1, -(-X.shape[0] // DISTILL_PIXELS))])
        out = np.empty((X.shape[0], self.n_bands_out), dtype=np.float32)

        self._predict_chunks(lambda a, b: X[a:b], lambda a, b: out[a:b].T, X.shape[0], progress)
        return out

    def _predict_chunks(self, get, out_view, n: int, progress: Progress | None) -> None:
        """Run ``n`` pixels through the network ``chunk_pixels`` at a time so memory stays bounded;
        ``out_view(a, b)`` is the (C, b - a) float32 view the chunk's spectra go into."""
        total = -(-n // self.chunk_pixels)
        with torch_threads(self.num_threads):
            for i, a in enumerate(range(0, n, self.chunk_pixels), start=1):
                b = min(n, a + self.chunk_pixels)
                self._predict_block(np.asarray(get(a, b), dtype=np.float64), out_view(a, b))
                if progress is not None:
                    progress(i, total, "predict")

    def _predict_block(self, msi: np.ndarray, out: np.ndarray) -> None:
        """(k, m) MSI pixels in user units -> ``out`` (C, k) float32 HSI spectra in user units, band-first.

        Works :data:`_INFERENCE_PIXELS` valid pixels at a time; every step is exact or element-wise, so each
        pixel's result is the same bits however the pixels are grouped (see :class:`ExactNetwork`).
        """
        net = self._inference_network()
        lo, hi = self.data_range
        floor = self.output_range[0]
        scaled_floor = (floor - lo) / (hi - lo)  # 0 unless the floor is not the data's minimum
        valid = np.all(np.isfinite(msi), axis=1)
        every = bool(valid.all())
        if not every:
            out[...] = np.nan
        direct = every and net.device.type == "cpu"  # the network writes straight into the caller's array
        columns = None if direct else np.flatnonzero(valid)
        scaled = torch.from_numpy((msi[valid] - self._msi_offset) / (hi - lo)).to(net.device)  # float64
        target = torch.from_numpy(out) if direct else None  # a (C, k) view
        work = net.workspace(min(_INFERENCE_PIXELS, scaled.shape[0]))
        with torch.inference_mode():
            for a in range(0, scaled.shape[0], _INFERENCE_PIXELS):
                b = min(scaled.shape[0], a + _INFERENCE_PIXELS)
                y = net(scaled[a:b], target[:, a:b] if direct else None, work)
                y.clamp_(scaled_floor, 1.0).mul_(hi - lo).add_(lo).clamp_(floor, hi)  # clip: see the class docstring
                if not direct:
                    out[:, columns[a:b]] = y.cpu().numpy()

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_net"] = None  # weights travel as numpy in _state; the network is rebuilt where it is used
        state.setdefault("_lr_hsi", None)
        state.setdefault("_response", None)
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_lr_hsi", None)  # models pickled before the consistency step moved into predict
        state.setdefault("_response", None)
        state.setdefault("nonnegative", False)  # models pickled before these recipe settings existed
        state.setdefault("msi_update", False)
        state.setdefault("_folded_output", None)
        state.setdefault("members", 1)
        state.setdefault("distill", 0.0)
        state.setdefault("student_hidden", None)
        state.setdefault("_pairs", None)
        state.setdefault("_msi_gain", None)
        self.__dict__.update(state)

