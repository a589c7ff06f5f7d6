"""Challenges: experiments a learner runs with one command and reads a measured verdict from.

    python -m challenges.ablations              # the "why" questions, one change at a time, measured
    python -m challenges.diagnose               # mystery models: name each hidden bug from its symptoms
    python -m challenges.length_generalization  # inputs longer or shorter than those trained on
    python -m challenges.real_models            # the course's blocks inside BERT, LLaMA and Mistral
    python -m challenges.sweep                  # heads, layers and d_model: what each changes in training

variants.py trains lesson 05's model with one change (the ablations and the mystery models share
it); components.py holds the parts the ablations and real_models use (RoPE in both layouts,
RMSNorm, SwiGLU, grouped-query attention, the sliding window, ...).
"""
