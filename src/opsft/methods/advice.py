"""What the project's own study found for data at a dataset's distance from the model: the reading `opsft score`
(and `opsft.score`) gives after its statistics.

The regime is read off the dataset's mean phi_mean (DDT, 0 = the model's own kind of text):

    phi_mean <  FAR_BELOW                  far: as the study's weak regime   (its data: -0.415)
    FAR_BELOW <= phi_mean < NEAR_FROM      between: the study measured nothing here
    phi_mean >= NEAR_FROM                  near or above 0: as its strong regime   (its data: +0.669)

NEAR_FROM is the authors' out-of-distribution mark (-0.1); FAR_BELOW puts the weak regime's -0.415 well inside
"far". The texts live here only: docs/results.md's rule of thumb quotes them (tests/test_advice.py checks it),
and they change when the study's reading does.
"""

from __future__ import annotations

FAR_BELOW = -0.3
NEAR_FROM = -0.1
STUDY = ("opsft's own study (docs/results.md): SmolLM2-135M-Instruct, 64 training problems, 13 methods and 4 "
         "iterative ones, 3 seeds, in two regimes; evidence at one small size, not a promise")
SOURCE = "docs/results.md#which-loss-when-the-two-regimes-side-by-side"

READINGS = {
    "far": "The solutions are far from the model's own distribution, as in the study's weak regime (phi_mean "
           "-0.415). There SFT and iw-SFT learned most (iw-SFT: +0.052 in-domain, +0.070 out-of-domain over SFT); "
           "the p-weighted losses DFT, ASFT and IDFT lost to SFT in-domain (-0.214 to -0.365), and the model's own "
           "outputs were too few to learn from, even over 3 rounds of opsft iterate (at most 15 of 64 problems "
           "kept in a round). Use SFT or iw-SFT, and tune the learning rate.",
    "between": "The solutions lie between the study's two regimes (weak -0.415, strong +0.669), where it measured "
               "nothing: no reading applies. Try SFT and iw-SFT first, and compare methods on your data with "
               "opsft lab.",
    "near": "The solutions are close to the model's own distribution, as in the study's strong regime (phi_mean "
            "+0.669). There the loss mattered little in-domain (DFT, ASFT, IDFT and EAFT within 0.06 of SFT), and "
            "training on the model's own outputs forgot least. In one round that cost in-domain accuracy (IDFT on "
            "rejection-sampled data: +0.120 out-of-domain over SFT, -0.177 in-domain); over 3 rounds of opsft "
            "iterate it did not (SFT on the model's own correct answers: +0.078 out-of-domain, +0.005 in-domain). "
            "If forgetting matters, train on the model's own outputs with opsft iterate, and tune the learning "
            "rate.",
}


def regime(phi_mean: float) -> str:
    """far, between or near, by the dataset's mean phi_mean (module doc); NaN (nothing scored) is between."""
    if phi_mean < FAR_BELOW:
        return "far"
    if phi_mean >= NEAR_FROM:
        return "near"
    return "between"


def advice(phi_mean: float) -> dict:
    """The reading for a dataset with this mean phi_mean: {regime, thresholds, text, study, source}."""
    name = regime(phi_mean)
    return {"regime": name, "thresholds": {"far_below": FAR_BELOW, "near_from": NEAR_FROM},
            "text": READINGS[name], "study": STUDY, "source": SOURCE}


def format_advice(reading: dict) -> str:
    """The reading as `opsft score` prints it, wrapped at 116 columns."""
    import textwrap

    t = reading["thresholds"]
    head = (f"regime: {reading['regime']} (far: phi_mean < {t['far_below']:+g}; near: >= {t['near_from']:+g}); "
            f"from {reading['study']}; more: {reading['source']}")
    return "\n".join(textwrap.fill(text, 116, initial_indent="  ", subsequent_indent="    ")
                     for text in (reading["text"], head))
