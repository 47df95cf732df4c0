"""Continuous control: iw-SFT, filtered behaviour cloning and SFT(Q) for policies trained from offline
trajectories (the iw-SFT paper's second half, arXiv 2507.12856). The weights are the loss family's own
(`opsft.methods.losses`), applied to [episodes x steps] log-probs of a Gaussian policy.

    data.py        trajectories in: D4RL hdf5, Minari, npz; episodes, returns, normalised scores
    policy.py      the Gaussian MLP policy, its log-probs, entropy and DDT phi
    curation.py    percentile tiers, top fraction, quality (SFT(Q))
    objectives.py  BC, filtered BC, iw-SFT (episode, step), SFT(Q), iw-SFT(Q) on padded episodes
    training.py    stage A (the reference) and stage C, episode or sampled (episode, step) batching
    evaluation.py  returns of the deterministic policy in its gymnasium environment
    generate.py    datasets made here: the scripted mixed-quality InvertedPendulum set
"""
