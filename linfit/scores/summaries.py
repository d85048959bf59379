"""One plain-language line per registered score: what it measures (``linfit scores`` and the legend of
``linfit select``). Higher is better for every score."""

SUMMARY = {
    "lfc": "correlation between the feature kernel ΦΦᵀ and the label kernel",
    "lfc_centered": "LFC on centred features (ablation)",
    "lgc": "correlation between the fine-tuning NTK (last convolution) and the label kernel",
    "lgc_paper": "LGC as the paper computes it: last-convolution gradients randomly projected to 10,000 dimensions",
    "lgc_all": "correlation between the fine-tuning NTK (all parameters) and the label kernel",
    "linearized_loss": "−(training loss left after time τ of linearized fine-tuning)/(initial loss); 0 = all fitted",
    "linearized_cv_accuracy": "held-out accuracy of the closed-form linearized model, k-fold on the scoring images",
    "leep": "log-likelihood of the target labels predicted through the source head",
    "nce": "−entropy of the target labels given the source head's predicted class",
    "logme": "log evidence of a Bayesian linear model on the features",
    "h_score": "between-class feature variance relative to the feature covariance",
    "regularized_h_score": "H-score with a shrunk (Ledoit–Wolf) feature covariance",
    "transrate": "coding rate of the features minus their coding rate given the labels",
    "gbc": "−overlap (Bhattacharyya) of per-class Gaussians fitted to the features",
    "nleep": "LEEP with a Gaussian mixture on the features in place of the source head",
    "parc": "correlation between the feature and label pairwise-distance matrices",
    "sfda": "class separability of the features under a regularised Fisher projection",
    "rsa": "rank correlation of the model's and a target-trained probe's dissimilarity matrices",
    "feature_metrics": "sparsity of the features (Hoyer measure and near-zero fraction)",
    "domain_similarity": "closeness of target and source class-mean features, exp(−γ·EMD)",
    "linear_probe": "held-out accuracy of logistic regression on the features",
    "knn": "held-out accuracy of k-nearest-neighbour classification on the features",
    "random": "a random number (the baseline every score should beat)",
}
