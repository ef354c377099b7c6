"""pass@k: the unbiased estimator of Chen et al. (2021), "Evaluating Large Language Models Trained
on Code", eq. 1 and its numerically stable product form (their Figure 3).

Given n samples per problem of which c pass, pass@k = 1 - C(n-c, k) / C(n, k). It does not run
code or average over problems: take the mean of per-problem values yourself.
"""

from __future__ import annotations


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) passes.

    Args:
        n: samples generated for the problem (n >= 1).
        c: samples that passed (0 <= c <= n).
        k: budget (1 <= k <= n). k=1 gives c/n.

    Returns:
        A float in [0, 1].
    """
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i): avoids the huge binomials of the closed form.
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail
