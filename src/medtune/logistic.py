"""L2-regularised logistic regression solved to its optimum by Newton's method, along a path of C.

The objective is scikit-learn's ``LogisticRegression(C=C)`` (lbfgs, newton-cholesky):

    mean_i loss_i + ||W||^2 / (2 C n)

with the intercepts unpenalised; the loss is the multinomial one for three classes or more and
the binomial one (one weight vector, that of the second class) for two, as scikit-learn fits
them. The objective is strictly convex in the weights, so every C has one optimum, and with it
one set of predictions. (The multinomial intercepts are defined up to a common shift, which
changes no probability: the intercepts returned sum to zero, as scikit-learn's do, and so do
the weights of each feature, as at the optimum.)

Newton's method reaches that optimum from any start, to the last digits that matter for a
prediction, in a few steps from a nearby one. L-BFGS instead stops where its tolerances say,
which at the ill-conditioned weak-regularisation end depends on the float precision and the
thread count. :meth:`LogisticPath.fit` fits C values in any order (a regularisation path:
strongest first), each from the solution at the nearest C fitted so far. A Newton step solves
the Hessian's system by conjugate gradients on exact Hessian-vector products (two products with
the features), preconditioned by the Cholesky factor of a Hessian from an earlier step or C
under the current penalty: the full Hessian (n x (k d)^2 / 2 multiply-adds, the one costly
part) is recomputed only when that preconditioner needs more than ``REFRESH_CG`` iterations,
about once every four C values on the default's features. A fit starts from the quadratic in
log C through the three nearest solutions where that is lower than the nearest solution. A
small model (two classes of 64-d features: 65 parameters) instead takes exact Newton steps, its
Hessian (one symmetric rank-k product over the features) recomputed at every step: at PCam's
size as fast as conjugate gradients on well-conditioned features, 1.4x faster on the default
encoder's (``docs/speed.md``).

Convergence is measured where predictions happen: a fit stops when its last step moved no
training image's logits, relative to each other, by more than ``tol`` (1e-9). Directions that
move no such logit (adding one vector to every class's weights, curved only by the penalty:
a condition number of 1e10 at C = 1e6 and 10,000 images) cannot then hold a fit back on
rounding noise.

Everything is computed in float64 with NumPy and SciPy, whatever the features' dtype: the
optimum, and so every prediction, does not depend on the input precision or on the thread count.
Measured here against scikit-learn's converged newton-cholesky and against torch on a CPU
(``docs/speed.md``): NumPy's symmetric rank-k product makes the Hessian twice as fast as torch's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.special import expit, log_softmax

TOL = 1e-6  # largest change of a training image's relative logits in a fit's last step
ARMIJO = 1e-4
# a Newton step is solved to a residual of FORCING times the gradient (an inexact Newton step:
# each step then shrinks the distance to the optimum about a hundredfold; solving each step
# exactly costs more conjugate-gradient iterations than the steps it saves)
FORCING = 1e-2
# conjugate-gradient iterations of a Newton step: a preconditioner (an earlier Hessian) that needs
# more than REFRESH_CG is replaced by the Hessian where the fit is now (on the default's features
# a Hessian costs about 50 products with it)
REFRESH_CG = 10
MAX_CG = 500
# a model with at most this many parameters (two classes: features + 1) takes exact Newton steps,
# a fresh Hessian at every step and no conjugate gradients: its Hessian (n x p^2 / 2 multiply-adds,
# one pass of BLAS-3 over the features) then costs about as much as the two memory-bound passes
# of one Hessian-vector product, and a step needs several of those
EXACT_NEWTON_PARAMETERS = 128


class NotConverged(RuntimeError):
    """A fit that did not reach its optimum within ``max_iter`` Newton steps."""


@dataclass
class Fit:
    """One C's optimum in scikit-learn's layout: ``coef`` (classes x features; one row, the
    second class's, for two classes) and ``intercept``; the Newton steps and full Hessians it took."""

    C: float
    coef: np.ndarray
    intercept: np.ndarray
    steps: int
    hessians: int


@dataclass
class _Solution:
    theta: np.ndarray  # free rows x (features + 1): the last column holds the intercepts
    hessian: np.ndarray | None  # the data part of the Hessian (no penalty) at or near theta: a preconditioner
    fit: Fit | None = None


class LogisticPath:
    """Logistic regressions of ``features`` against ``labels`` (any sortable labels, at least two
    distinct) at any number of C values, each warm-started from the nearest fitted one."""

    def __init__(self, features, labels, max_iter: int = 100, tol: float = TOL):
        self.classes, y = np.unique(np.asarray(labels), return_inverse=True)
        if len(self.classes) < 2:
            raise ValueError(f"logistic regression needs two classes or more, got {list(self.classes)}")
        features = np.asarray(features, dtype=np.float64)
        self.x = np.hstack([features, np.ones((len(features), 1))])
        self.n, self.width = self.x.shape
        self.y = y
        k = len(self.classes)
        # two classes: the second class's row alone (the first class's logit is 0), as scikit-learn fits them
        self.rows = 1 if k == 2 else k
        self.onehot = np.eye(k)[y][:, k - self.rows:]
        # the multinomial intercepts are defined up to a shift: the last one (the last parameter)
        # stays where it starts
        self.free = self.rows * self.width - (self.rows > 1)
        self.penalised = np.ones((self.rows, self.width))
        self.penalised[:, -1] = 0
        self.penalised = self.penalised.ravel()[: self.free]
        self.max_iter, self.tol = max_iter, tol
        self.exact_newton = self.rows * self.width <= EXACT_NEWTON_PARAMETERS
        self._solutions: dict[float, _Solution] = {}

    # ---- the objective ----------------------------------------------------------------

    def _logits(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Every class's logit (for two classes the first is 0)."""
        z = x @ theta.T
        return np.hstack([np.zeros_like(z), z]) if self.rows == 1 else z

    def _value_gradient(self, z: np.ndarray, theta: np.ndarray, reg: float):
        """The objective at the free rows' logits ``z`` (``x @ theta.T``) of parameters ``theta``,
        its gradient and the free rows' probabilities."""
        weights = theta[:, :-1]
        penalty = 0.5 * reg * np.vdot(weights, weights)
        if self.rows == 1:  # -log p(y) = log(1 + e^z) - y z for the second class's logit z
            value = float(np.sum(np.logaddexp(0.0, z) - self.onehot * z)) / self.n + penalty
            p = expit(z)
        else:
            log_p = log_softmax(z, axis=1)
            value = -np.take_along_axis(log_p, self.y[:, None], 1).sum() / self.n + penalty
            p = np.exp(log_p)
        gradient = (p - self.onehot).T @ self.x / self.n
        gradient[:, :-1] += reg * weights
        return float(value), gradient, p

    def _data_hessian(self, p: np.ndarray) -> np.ndarray:
        """(1/n) sum_i (diag(p_i) - p_i p_i^T) kron x_i x_i^T over the free rows."""
        x, rows, width = self.x, self.rows, self.width
        if rows == 1:  # sum_i p_i (1 - p_i) x_i x_i^T: one symmetric rank-k product
            z = x * np.sqrt(p * (1.0 - p))
            return (z.T @ z) / self.n
        z = (p[:, :, None] * x[:, None, :]).reshape(self.n, rows * width)
        hessian = -(z.T @ z)  # NumPy hands a product of an array with its own transpose to BLAS's syrk
        for k in range(rows):
            block = slice(k * width, (k + 1) * width)
            hessian[block, block] += (x * p[:, k : k + 1]).T @ x
        return hessian / self.n

    def _factor(self, data_hessian: np.ndarray, reg: float, fresh: bool):
        """Cholesky factor of the free parameters' Hessian with the penalty; None where a reused
        Hessian is not positive definite. A fresh one that is not (the intercept's curvature
        underflows when every probability is 0 or 1) gets a jitter of 1e-12 of its largest entry."""
        h = data_hessian[: self.free, : self.free].copy()
        h[np.diag_indices_from(h)] += reg * self.penalised
        try:
            return scipy.linalg.cho_factor(h, check_finite=False)
        except np.linalg.LinAlgError:
            if not fresh:
                return None
        h[np.diag_indices_from(h)] += 1e-12 * h.diagonal().max()
        return scipy.linalg.cho_factor(h, check_finite=False)

    def _relative_change(self, dz: np.ndarray) -> float:
        """The largest change of a training image's logits relative to each other (centred over
        classes), from the change ``dz`` of the free rows' logits."""
        if self.rows == 1:  # the logits (0, z) move by -dz/2 and dz/2 about their mean
            return float(np.abs(dz).max()) / 2
        return float(np.abs(dz - dz.mean(axis=1, keepdims=True)).max())

    # ---- one C ------------------------------------------------------------------------

    def _all_parameters(self, free: np.ndarray) -> np.ndarray:
        """The free parameters ``free`` as rows x (features + 1), the fixed last intercept 0."""
        full = np.zeros(self.rows * self.width)
        full[: self.free] = free
        return full.reshape(self.rows, self.width)

    def _hessian_product(self, p: np.ndarray, v: np.ndarray, reg: float) -> np.ndarray:
        """The Hessian at probabilities ``p`` times ``v`` (free parameters), exactly, without the Hessian:
        two products with the features."""
        full = self._all_parameters(v)
        pu = p * (self.x @ full.T)
        # (diag(p_i) - p_i p_i^T) u_i: the first of two classes has u = 0, so one formula serves both losses
        product = (pu - p * pu.sum(axis=1, keepdims=True)).T @ self.x / self.n
        product[:, :-1] += reg * full[:, :-1]
        return product.ravel()[: self.free]

    def _newton_step(self, p, gradient, factor, reg, forcing, max_cg):
        """The Newton step for ``gradient`` at probabilities ``p``: conjugate gradients on the exact
        Hessian's products, preconditioned by the Cholesky ``factor`` of a Hessian from here or from a
        nearby point (a previous step or C), to a residual of ``forcing`` times the gradient. The step
        (all parameters) and the iterations it took; None where the preconditioner is too stale to
        get there in ``max_cg`` iterations."""
        rhs = -gradient.ravel()[: self.free]
        target = forcing * np.linalg.norm(rhs)
        step = scipy.linalg.cho_solve(factor, rhs, check_finite=False)  # the preconditioner's own step
        residual = rhs - self._hessian_product(p, step, reg)
        for iterations in range(max_cg + 1):
            if np.linalg.norm(residual) <= target:
                return self._all_parameters(step), iterations
            if iterations == max_cg:
                return None, iterations
            preconditioned = scipy.linalg.cho_solve(factor, residual, check_finite=False)
            rz = float(residual @ preconditioned)
            direction = preconditioned if iterations == 0 else preconditioned + (rz / previous_rz) * direction
            previous_rz = rz
            h_direction = self._hessian_product(p, direction, reg)
            alpha = rz / float(direction @ h_direction)
            step = step + alpha * direction
            residual = residual - alpha * h_direction
        raise AssertionError("unreachable")

    def _solve(self, C: float, start: _Solution) -> _Solution:
        reg = 1.0 / (C * self.n)
        theta, data_hessian = start.theta.copy(), start.hessian
        z = self.x @ theta.T
        value, gradient, p = self._value_gradient(z, theta, reg)
        hessians, factor = 0, None
        for step_number in range(1, self.max_iter + 1):
            fresh = data_hessian is None or self.exact_newton
            if fresh:
                data_hessian, hessians, factor = self._data_hessian(p), hessians + 1, None
            if factor is None:
                factor = self._factor(data_hessian, reg, fresh)
                if factor is None:  # a Hessian from too far away
                    data_hessian = None
                    continue
            if self.exact_newton:  # the Hessian here: its own step is the Newton step
                direction = self._all_parameters(scipy.linalg.cho_solve(factor, -gradient.ravel()[: self.free], check_finite=False))
            else:
                # a preconditioner (an earlier Hessian) that needs more iterations than a Hessian
                # costs in products is replaced by the Hessian where the fit is now
                direction, iterations = self._newton_step(p, gradient, factor, reg, FORCING, MAX_CG if fresh else REFRESH_CG)
                if direction is None:
                    if not fresh:
                        data_hessian = None
                        continue
                    raise NotConverged(f"logistic regression at C={C:g}: the Newton step did not converge in {MAX_CG} iterations")
            dz = self.x @ direction.T
            size = self._relative_change(dz)
            if size <= self.tol:  # a step that moves no logit: taken as it is, and the fit is done
                theta = theta + direction
                return _Solution(theta, data_hessian, self._fit(C, theta, step_number, hessians))
            slope = float(np.vdot(gradient, direction))
            t = 1.0
            while True:
                new_value, new_gradient, new_p = self._value_gradient(z + t * dz, theta + t * direction, reg)
                # Armijo's decrease; a step too small to move a logit, or one that changes the
                # objective by less than its rounding, is taken as it is
                if new_value <= value + ARMIJO * t * slope or t * size <= self.tol or new_value - value <= 1e-15 * abs(value):
                    break
                t *= 0.5
            theta, z = theta + t * direction, z + t * dz
            value, gradient, p = new_value, new_gradient, new_p
            if t * size <= self.tol:
                return _Solution(theta, data_hessian, self._fit(C, theta, step_number, hessians))
        raise NotConverged(f"logistic regression at C={C:g}: not converged in {self.max_iter} Newton steps")

    def _fit(self, C: float, theta: np.ndarray, steps: int, hessians: int) -> Fit:
        coef, intercept = theta[:, :-1].copy(), theta[:, -1].copy()
        if self.rows > 1:
            # the optimum's weights and intercepts each sum to zero over the classes (the penalty
            # is least there along the shift that changes no probability; scikit-learn's start
            # there and its steps keep it): where rounding left the solution along that shift
            coef -= coef.mean(axis=0)
            intercept -= intercept.mean()
        return Fit(C, coef, intercept, steps, hessians)

    # ---- the path ---------------------------------------------------------------------

    def fit(self, C: float) -> Fit:
        """The optimum at ``C``, started from the nearest C (in log scale) fitted so far, or from
        the curve through the nearest ones."""
        C = float(C)
        if C not in self._solutions:
            nearest = sorted(self._solutions, key=lambda c: (abs(np.log(c / C)), c))
            if not nearest:
                start = _Solution(np.zeros((self.rows, self.width)), None)
            else:
                start = self._solutions[nearest[0]]
                if len(nearest) > 1:
                    # the path is smooth in log C: the curve through the three (or two) nearest
                    # solutions, extrapolated along the path or interpolated between neighbours,
                    # starts closer where its objective is lower
                    known = nearest[:3]
                    at = [np.log(c) for c in known]
                    weights = [np.prod([(np.log(C) - at[j]) / (at[i] - at[j]) for j in range(len(at)) if j != i]) for i in range(len(at))]
                    predicted = sum(w * self._solutions[c].theta for w, c in zip(weights, known))
                    reg = 1.0 / (C * self.n)
                    objective = lambda theta: self._value_gradient(self.x @ theta.T, theta, reg)[0]
                    if objective(predicted) < objective(start.theta):
                        start = _Solution(predicted, start.hessian)
            self._solutions[C] = self._solve(C, start)
        return self._solutions[C].fit

    def decision(self, fit: Fit, features) -> np.ndarray:
        """Every class's logit (the first one 0 for two classes) for ``features``, in float64."""
        x = np.asarray(features, dtype=np.float64)
        return self._logits(fit.coef, x) + (np.r_[0.0, fit.intercept] if self.rows == 1 else fit.intercept)

    def predict(self, fit: Fit, features) -> np.ndarray:
        return self.classes[self.decision(fit, features).argmax(axis=1)]
