"""The image encoder's own benchmarks, read through CLIP's joint space: MMVP-VLM pairs, zero-shot
classification (with K-LITE knowledge prompts), image-text retrieval, and linear probes."""
