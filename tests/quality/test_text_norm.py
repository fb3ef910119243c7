"""normalize_for_wer: the same normalization for references and ASR transcripts."""

from __future__ import annotations

import pytest

from kokoro_opt.quality.text_norm import normalize_for_wer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("  Don't   STOP—ever…  ", "dont stop ever"),
        ("“Quoted,” she said; (aside) ok.", "quoted she said aside okay"),
        ("Café au lait", "cafe au lait"),
        ("I've been there, done that, T-shirt.", "ive been there done that t shirt"),
        # cardinals, grouped numbers, decimals, leading zeros, negatives
        ("The score was 3 to 2.", "the score was three to two"),
        ("We sold 1,024 copies.", "we sold one thousand twenty four copies"),
        ("More than 2,500,000 books", "more than two million five hundred thousand books"),
        ("They won by 0.05 seconds.", "they won by zero point zero five seconds"),
        ("Call 555-0142.", "call five hundred fifty five zero one four two"),
        ("It is -5 outside", "it is minus five outside"),
        ("Room 404", "room four hundred four"),
        # ordinals, years, decades
        ("He was 3rd, then 21st.", "he was third then twenty first"),
        ("The 100th visitor", "the one hundredth visitor"),
        ("In 1969 and in 2004", "in nineteen sixty nine and in two thousand four"),
        ("Between 2010 and 2023", "between twenty ten and twenty twenty three"),
        ("The 1990s and the '80s", "the nineteen nineties and the eighties"),
        # money and percentages
        ("It costs $12.50, or $15.", "it costs twelve dollars fifty cents or fifteen dollars"),
        ("Only $1 or $0.99", "only one dollar or ninety nine cents"),
        ("$3.4 billion", "three point four billion dollars"),
        ("£20 and €5", "twenty pounds and five euros"),
        ("Up 7.5% and 40 %", "up seven point five percent and forty percent"),
        # times
        ("At 9:30 a.m. or 7:05 PM", "at nine thirty am or seven oh five pm"),
        ("At 10:00 or 10 o'clock", "at ten or ten"),
        # abbreviations
        ("Dr. Smith met Mr. and Mrs. Patel.", "doctor smith met mister and missus patel"),
        ("St. Louis is on Elm St., Apt. 3B.", "saint louis is on elm street apartment three b"),
        ("Sgt. Miller, Lt. Jones, Gen. Harris", "sergeant miller lieutenant jones general harris"),
        ("John Baker Jr. and Sr.", "john baker junior and senior"),
        (
            "Eggs, milk, etc. e.g. bread, i.e. food",
            "eggs milk et cetera for example bread that is food",
        ),
        ("Lions vs. Tigers", "lions versus tigers"),
        ("The U.S. and the U.K.", "the us and the uk"),
        ("A Ph.D. or a PhD", "a phd or a phd"),
        ("NASA and the FBI", "nasa and the fbi"),
        ("He ran 5 km", "he ran five kilometers"),
    ],
)
def test_normalize_for_wer(text: str, expected: str) -> None:
    assert normalize_for_wer(text) == expected


@pytest.mark.parametrize(
    ("reference", "transcript"),
    [
        (
            "Dr. Smith paid $12.50 on July 4th.",
            "doctor smith paid twelve dollars fifty cents on july fourth",
        ),
        ("The 2nd prize is $5,000.", "The second prize is 5000 dollars."),
        ("Fifty-five.", "55"),
        ("It happened in nineteen sixty-nine.", "It happened in 1969."),
        ("Twenty percent", "20%"),
    ],
)
def test_reference_and_transcript_meet(reference: str, transcript: str) -> None:
    assert normalize_for_wer(reference) == normalize_for_wer(transcript)


def test_empty_and_symbol_only() -> None:
    assert normalize_for_wer("") == ""
    assert normalize_for_wer(" ... !? ") == ""


def test_idempotent() -> None:
    text = "Dr. Smith paid $3.99 at 9:30 a.m. on the 21st of May, 1986 (U.S.)."
    once = normalize_for_wer(text)
    assert normalize_for_wer(once) == once
