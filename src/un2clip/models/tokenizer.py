"""A word-level tokenizer built in code (no download), saved and loaded as a HF fast tokenizer."""

from __future__ import annotations

from collections.abc import Iterable

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIALS = (PAD, UNK, BOS, EOS)


def build_word_tokenizer(words: Iterable[str], *, context_length: int = 32):
    """Lower-cased, punctuation-split word-level tokenizer: ids 0..3 are PAD, UNK, BOS, EOS.

    Every sequence is ``BOS words... EOS`` padded with PAD, so CLIP's text model pools at
    the first EOS (set ``eos_token_id=3`` in its config).
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIALS)}
    for word in sorted({w.lower() for w in words}):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="removed")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=context_length,
    )
