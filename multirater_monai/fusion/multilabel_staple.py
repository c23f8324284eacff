"""Multi-label STAPLE (Rohlfing et al. 2004) of multi-rater label maps, through SimpleITK."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from multirater_monai.fusion.utils import as_rater_labels

__all__ = ["MultiLabelStapleResult", "multilabel_staple"]

# Floor of a confusion-matrix entry in the fallback posterior of pixels every class of which is
# contradicted by some rater (an exact posterior of 0 / 0).
_LOG_FLOOR = 1e-12


@dataclass
class MultiLabelStapleResult:
    """Output of :func:`multilabel_staple`.

    Attributes:
        label: (*S) int64 fused class indices in ``0..L-1`` (SimpleITK's "undecided" pixels resolved).
        probabilities: (L, *S) float32 posterior class probabilities given the raters' labels and the
            estimated confusion matrices; ``label`` is their argmax.
        confusion_matrices: (R, L, L) float64, ``A[r, i, j] = p(rater r says i | truth j)``, columns
            sum to 1; a column is NaN when class ``j`` never occurs in the estimated truth, and a whole
            matrix is NaN for a rater who did not annotate the image.
        prior: (L,) float64 class priors used (relative label frequencies over the annotating raters).
        rater_mask: (R,) bool, the raters that annotated the image.
    """

    label: np.ndarray
    probabilities: np.ndarray
    confusion_matrices: np.ndarray
    prior: np.ndarray
    rater_mask: np.ndarray


def multilabel_staple(
    labels: np.ndarray | torch.Tensor,
    num_classes: int,
    max_iterations: int | None = None,
    termination_threshold: float | None = None,
) -> MultiLabelStapleResult:
    """Multi-label STAPLE of the annotating raters, with ``sitk.MultiLabelSTAPLEImageFilter``.

    The annotating raters' maps go to SimpleITK as unsigned integer images (8 bit, or 16 bit from
    255 classes on); missing raters (channels entirely ``-1``) are left out.

    SimpleITK's confusion matrix of input ``k`` is a flat list of ``(L' + 1) * L'`` numbers, with
    ``L'`` = the largest label in the inputs + 1: row-major, rows are the label the rater gave (plus a
    last row for the "undecided" label, 0 here as inputs never contain it), columns the estimated true
    label. So ``matrix[i, j] = p(rater says i | truth j)`` already is the project's convention: the
    undecided row is dropped, the matrix is embedded in ``L x L``, and columns that are 0 (class not in
    the estimated truth) become NaN; the other columns are renormalised to sum exactly 1.

    Posterior probabilities are not exposed by SimpleITK; they are recomputed from its converged
    confusion matrices as in its E-step, ``p(j | d) ∝ prior_j * prod_r A_r[d_r, j]``, with the prior
    ITK uses by default (relative label frequencies over all input images). Where every class gets
    probability 0 (each contradicted by a rater with an estimated rate of 0), entries are floored at
    1e-12 for those pixels. ``label`` is SimpleITK's output, except for its "undecided" pixels (a tie
    of the posterior), which get the argmax of the posterior (lowest class index among ties).

    Args:
        labels: (R, *S) integer class indices in ``0..L-1``, *S 2D or 3D; a channel entirely ``-1`` is
            a missing rater.
        num_classes: ``L``.
        max_iterations: cap on the EM iterations (SimpleITK's default when None).
        termination_threshold: EM stops when no confusion-matrix entry changes by more than this
            (SimpleITK's default 1e-5 when None).

    Returns:
        a :class:`MultiLabelStapleResult`.

    Raises:
        ValueError: invalid labels (see :func:`~multirater_monai.fusion.utils.as_rater_labels`) or
            spatial dimensions other than 2 or 3.
    """
    arr, rater_mask = as_rater_labels(labels, num_classes, min_spatial_dims=2)
    if arr.ndim not in (3, 4):
        raise ValueError(f"STAPLE needs 2D or 3D label maps, (R, H, W) or (R, D, H, W); got shape {arr.shape}.")
    if num_classes >= np.iinfo(np.uint16).max:
        raise ValueError(f"multilabel_staple supports fewer than 65535 classes, got {num_classes}.")
    dtype = np.uint8 if num_classes < np.iinfo(np.uint8).max else np.uint16
    undecided = int(np.iinfo(dtype).max)
    annotated = arr[rater_mask]

    f = sitk.MultiLabelSTAPLEImageFilter()
    f.SetLabelForUndecidedPixels(undecided)
    if max_iterations is not None:
        f.SetMaximumNumberOfIterations(int(max_iterations))
    if termination_threshold is not None:
        f.SetTerminationUpdateThreshold(float(termination_threshold))
    out = f.Execute([sitk.GetImageFromArray(a.astype(dtype)) for a in annotated])
    sitk_label = sitk.GetArrayFromImage(out).astype(np.int64)

    cms = np.stack([_to_project_cm(f.GetConfusionMatrix(k), num_classes) for k in range(annotated.shape[0])])
    prior = np.bincount(annotated.ravel(), minlength=num_classes).astype(np.float64) / annotated.size
    probabilities = _posterior(annotated, cms, prior)

    label = np.where(sitk_label == undecided, np.argmax(probabilities, axis=0), sitk_label)
    confusion_matrices = np.full((arr.shape[0], num_classes, num_classes), np.nan)
    confusion_matrices[rater_mask] = cms
    return MultiLabelStapleResult(
        label=label.astype(np.int64),
        probabilities=probabilities.astype(np.float32),
        confusion_matrices=confusion_matrices,
        prior=prior,
        rater_mask=rater_mask,
    )


def _to_project_cm(flat: tuple[float, ...] | list[float], num_classes: int) -> np.ndarray:
    """SimpleITK's flat (L' + 1) x L' confusion matrix -> (L, L) column-normalised, NaN columns if undefined."""
    n = len(flat)
    sitk_classes = int(round((np.sqrt(1 + 4 * n) - 1) / 2))
    if sitk_classes * (sitk_classes + 1) != n or sitk_classes > num_classes:
        raise RuntimeError(f"unexpected SimpleITK confusion matrix of {n} entries for {num_classes} classes.")
    raw = np.asarray(flat, dtype=np.float64).reshape(sitk_classes + 1, sitk_classes)[:sitk_classes]
    cm = np.zeros((num_classes, num_classes))
    cm[:sitk_classes, :sitk_classes] = raw
    totals = cm.sum(axis=0)
    defined = totals > 1e-12
    cm[:, defined] /= totals[defined]
    cm[:, ~defined] = np.nan
    return cm


def _posterior(annotated: np.ndarray, cms: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """(L, *S) posterior p(truth | rater labels) from the labels (K, *S), CMs (K, L, L) and prior (L,)."""
    num_classes = prior.shape[0]
    spatial = annotated.shape[1:]
    cms = np.nan_to_num(cms, nan=0.0)
    flat = annotated.reshape(annotated.shape[0], -1)
    # likelihood[k, j, x] = A_k[d_k(x), j]
    likelihood = np.stack([cm[d].T for cm, d in zip(cms, flat)])  # (K, L, P)
    post = prior[:, None] * np.prod(likelihood, axis=0)  # (L, P)
    total = post.sum(axis=0)
    zero = total <= 0
    if np.any(zero):
        # classes no rater used keep probability 0; the likelihoods are floored
        log_prior = np.full(num_classes, -np.inf)
        log_prior[prior > 0] = np.log(prior[prior > 0])
        log_post = log_prior[:, None] + np.log(np.maximum(likelihood[:, :, zero], _LOG_FLOOR)).sum(axis=0)
        log_post -= log_post.max(axis=0, keepdims=True)
        fallback = np.exp(log_post)
        post[:, zero] = fallback
        total = post.sum(axis=0)
    return (post / total).reshape((num_classes,) + spatial)
