"""Evaluations of a multimodal LLM built on the encoder (a LLaVA): MMVP-MLLM and CV-Bench, with the shared
multiple-choice prompting and answer matching (``choices``)."""
