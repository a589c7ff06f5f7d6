"""Challenges: experiments a learner runs with one command and reads a measured verdict from.

    python -m challenges.sweep          # heads, layers and d_model: what each changes in training
"""
