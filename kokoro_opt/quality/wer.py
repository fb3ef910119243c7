"""Word and character error rates with jiwer, after `text_norm.normalize_for_wer`.

Corpus-level rates pool the edits of all utterances (total edits / total reference words),
which is how ASR papers report WER; per-utterance rates say where the errors are. CER counts
characters of the normalized text, spaces included.

    wer(["The cat sat."], ["the cat sat"])            # 0.0
    scores = error_rates(refs, hyps)                  # corpus + per-utterance, edit counts
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from kokoro_opt.errors import UserInputError
from kokoro_opt.quality.text_norm import normalize_for_wer


@dataclass(frozen=True)
class UtteranceErrors:
    """Errors of one transcript against its reference (normalized texts included)."""

    reference: str
    hypothesis: str
    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_words: int
    ref_chars: int
    char_edits: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class CorpusErrors:
    """Corpus-level WER/CER (pooled edits) and the per-utterance breakdown."""

    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    ref_words: int
    ref_chars: int
    utterances: tuple[UtteranceErrors, ...]

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["utterances"] = [u.to_dict() for u in self.utterances]
        return out


def wer(refs: str | Sequence[str], hyps: str | Sequence[str], *, normalize: bool = True) -> float:
    """Corpus-level word error rate (edits / reference words)."""
    return error_rates(refs, hyps, normalize=normalize).wer


def cer(refs: str | Sequence[str], hyps: str | Sequence[str], *, normalize: bool = True) -> float:
    """Corpus-level character error rate (edits / reference characters)."""
    return error_rates(refs, hyps, normalize=normalize).cer


def error_rates(
    refs: str | Sequence[str], hyps: str | Sequence[str], *, normalize: bool = True
) -> CorpusErrors:
    """WER and CER for the whole corpus and for each utterance.

    `refs` and `hyps` are one string each or equal-length sequences. With `normalize` (the
    default) both sides go through `normalize_for_wer`; otherwise they are only split on
    whitespace. A reference with no words after normalization is an error.
    """
    import jiwer

    ref_list, hyp_list = _pairs(refs, hyps)
    if normalize:
        ref_list = [normalize_for_wer(r) for r in ref_list]
        hyp_list = [normalize_for_wer(h) for h in hyp_list]
    else:
        ref_list = [" ".join(r.split()) for r in ref_list]
        hyp_list = [" ".join(h.split()) for h in hyp_list]
    for i, ref in enumerate(ref_list):
        if not ref:
            raise UserInputError(
                f"Reference #{i} has no words after normalization; every reference needs at "
                "least one word (letters or digits)."
            )
    utterances = []
    for ref, hyp in zip(ref_list, hyp_list, strict=True):
        words = jiwer.process_words(ref, hyp)
        chars = jiwer.process_characters(ref, hyp)
        ref_chars = len(ref)
        char_edits = chars.substitutions + chars.deletions + chars.insertions
        utterances.append(
            UtteranceErrors(
                reference=ref,
                hypothesis=hyp,
                wer=float(words.wer),
                cer=char_edits / ref_chars,
                substitutions=words.substitutions,
                deletions=words.deletions,
                insertions=words.insertions,
                hits=words.hits,
                ref_words=len(ref.split()),
                ref_chars=ref_chars,
                char_edits=char_edits,
            )
        )
    subs = sum(u.substitutions for u in utterances)
    dels = sum(u.deletions for u in utterances)
    ins = sum(u.insertions for u in utterances)
    ref_words = sum(u.ref_words for u in utterances)
    ref_chars = sum(u.ref_chars for u in utterances)
    char_edits = sum(u.char_edits for u in utterances)
    return CorpusErrors(
        wer=(subs + dels + ins) / ref_words,
        cer=char_edits / ref_chars,
        substitutions=subs,
        deletions=dels,
        insertions=ins,
        ref_words=ref_words,
        ref_chars=ref_chars,
        utterances=tuple(utterances),
    )


def _pairs(refs: str | Sequence[str], hyps: str | Sequence[str]) -> tuple[list[str], list[str]]:
    ref_list = [refs] if isinstance(refs, str) else list(refs)
    hyp_list = [hyps] if isinstance(hyps, str) else list(hyps)
    if len(ref_list) != len(hyp_list):
        raise UserInputError(
            f"Got {len(ref_list)} references and {len(hyp_list)} transcripts; give one "
            "transcript per reference."
        )
    if not ref_list:
        raise UserInputError("No references to score; give at least one reference/transcript.")
    for what, items in (("reference", ref_list), ("transcript", hyp_list)):
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise UserInputError(
                    f"{what.capitalize()} #{i} is {type(item).__name__}, not text."
                )
    return ref_list, hyp_list
