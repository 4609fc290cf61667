"""Prompt templates, verbalizers and demonstrations (strings -> token ids; no JAX). Filled by the prompt-based fine-tuning issue."""
