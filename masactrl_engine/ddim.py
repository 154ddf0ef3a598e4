"""Deterministic DDIM (eta = 0) in both directions, as pure functions of the scheduler's alphas.

The numbers are those of diffusers' ``DDIMScheduler`` (denoising) and ``DDIMInverseScheduler``
(inversion) built from the checkpoint's scheduler config; the tests check that step for step.
Holding no mutable state (unlike a diffusers scheduler) makes one instance safe to share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DDIM:
    timesteps: tuple[int, ...]  # denoising order, e.g. 981, 961, ..., 1 for SD 1.5 and 50 steps
    alphas_cumprod: torch.Tensor  # float64, on the CPU
    final_alpha_cumprod: float
    step_ratio: int
    prediction_type: str

    @classmethod
    def from_config(cls, scheduler_config, num_steps: int) -> "DDIM":
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(scheduler_config)
        scheduler.set_timesteps(num_steps)
        if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {scheduler.config.prediction_type!r}")
        return cls(
            timesteps=tuple(int(t) for t in scheduler.timesteps),
            alphas_cumprod=scheduler.alphas_cumprod.double(),
            final_alpha_cumprod=float(scheduler.final_alpha_cumprod),
            step_ratio=scheduler.config.num_train_timesteps // num_steps,
            prediction_type=scheduler.config.prediction_type,
        )

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def _alpha(self, t: int) -> float:
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha_cumprod

    def _eps(self, model_output: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
        if self.prediction_type == "v_prediction":
            return alpha**0.5 * model_output + (1 - alpha) ** 0.5 * x
        return model_output

    @staticmethod
    def _move(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
        x0 = (x - (1 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
        return alpha_to**0.5 * x0 + (1 - alpha_to) ** 0.5 * eps

    def denoise(self, model_output: torch.Tensor, step: int, x: torch.Tensor) -> torch.Tensor:
        """Denoising step ``step`` (0 = noisiest): x at ``timesteps[step]`` -> the next, cleaner level."""
        t = self.timesteps[step]
        a_t, a_prev = self._alpha(t), self._alpha(t - self.step_ratio)
        return self._move(x, self._eps(model_output, x, a_t), a_t, a_prev)

    def inversion_timestep(self, k: int) -> int:
        """UNet timestep of inversion step ``k`` (0 = cleanest): the reverse of the denoising order."""
        return self.timesteps[self.num_steps - 1 - k]

    def invert(self, model_output: torch.Tensor, k: int, x: torch.Tensor) -> torch.Tensor:
        """Inversion step ``k``: x one level below ``inversion_timestep(k)`` -> x at that level."""
        t = self.inversion_timestep(k)
        a_from, a_to = self._alpha(t - self.step_ratio), self._alpha(t)
        # The noise estimate is taken at t while x sits one level lower: the usual DDIM inversion
        # approximation (MasaCtrl's next_step, diffusers' DDIMInverseScheduler).
        return self._move(x, self._eps(model_output, x, a_from), a_from, a_to)
