"""`kokoro-opt speak TEXT -o out.wav`: synthesize text to a 24 kHz mono PCM16 WAV file."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from kokoro_opt.cli._windows import FirstWindow, WindowContext, window_plan
from kokoro_opt.cli.console import console, err_console

DEFAULT_MODEL = "kokoro-fp32"
# Same as kokoro_opt.runtime.voices.DEFAULT_VOICE (a test keeps them equal); not imported from
# there so that `kokoro-opt --help` does not import numpy.
DEFAULT_VOICE = "jf_gongitsune"


def register(app: typer.Typer) -> None:
    """Add the `speak` command to the root app."""
    app.command("speak")(speak)


def speak(
    text: Annotated[
        str, typer.Argument(help="The text to speak, or '-' to read it from standard input.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The WAV file to write (24 kHz mono PCM16).")
    ],
    model: Annotated[
        str,
        typer.Option(help="A model cache name (such as kokoro-int8-export) or an .onnx path."),
    ] = DEFAULT_MODEL,
    voice: Annotated[
        str,
        typer.Option(help="A voice name, or a blend such as 'jf_alpha*0.7+jm_kumo*0.3'."),
    ] = DEFAULT_VOICE,
    voices: Annotated[
        Path | None,
        typer.Option(
            help="A voice pack to use instead of the bundled Japanese voices: a kokoro-onnx "
            ".bin/.npz, a .npy file, or a folder of .npy files."
        ),
    ] = None,
    speed: Annotated[
        float, typer.Option(help="Speaking rate from 0.5 to 2.0; 1.0 is normal.")
    ] = 1.0,
    lang: Annotated[
        str, typer.Option(help="The language of the text, such as en-us, en-gb, es or fr.")
    ] = "en-us",
    provider: Annotated[
        str, typer.Option(help="The ONNX Runtime provider: cpu, cuda, coreml or auto.")
    ] = "cpu",
    threads: Annotated[
        int | None,
        typer.Option(help="Intra-op threads for ONNX Runtime; default is one per core."),
    ] = None,
    timestamps: Annotated[
        Path | None,
        typer.Option(
            help="Also write word timestamps (seconds of the WAV) to this file: .json, .srt or "
            ".vtt, by extension. The model gets a durations output in memory if it has none.",
            show_default=False,
        ),
    ] = None,
    lexicon: Annotated[
        Path | None,
        typer.Option(
            help="A pronunciation file: one 'word<TAB>phonemes' per line. A lower-case word "
            "matches any capitalization; a word with capitals matches only that spelling.",
            show_default=False,
        ),
    ] = None,
    ssml: Annotated[
        str,
        typer.Option(
            help="SSML tags other than <break> and <speak>: 'strict' refuses them, 'lenient' "
            "strips them and keeps their text."
        ),
    ] = "strict",
    split: Annotated[
        Path | None,
        typer.Option(
            help="A folder from `kokoro-opt split` of the same model: render in windows, so "
            "the first audio comes before the first segment is done."
        ),
    ] = None,
    window: Annotated[
        str,
        typer.Option(help="Statistics policy with --split: first, generator, window or whole."),
    ] = "first",
    first_window: FirstWindow = 6,
    window_context: WindowContext = 3,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON instead of a table.")
    ] = False,
) -> None:
    """Speak TEXT into a WAV file and print duration, synthesis time and real-time factor.

    TEXT may hold pauses ([pause:0.5s], <break time="300ms"/>) and pronunciations
    ([Kokoro](/kˈOkəɹO/)); see docs/speech-markup.md."""
    import numpy as np
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from kokoro_opt.errors import UserInputError
    from kokoro_opt.runtime.audio import write_wav
    from kokoro_opt.runtime.g2p import get_g2p, normalize_lang
    from kokoro_opt.runtime.markup import Lexicon, check_ssml_mode, parse_markup
    from kokoro_opt.runtime.session import normalize_provider
    from kokoro_opt.runtime.synthesizer import SAMPLE_RATE, Synthesizer, check_speed, check_text
    from kokoro_opt.runtime.timestamps import check_timestamps_path, shift, write_timestamps
    from kokoro_opt.runtime.voices import VoiceLibrary
    from kokoro_opt.store import resolve_model

    if text == "-":
        text = sys.stdin.read()
    # Cheap checks first, so bad input fails before the model loads.
    check_text(text)
    ssml = check_ssml_mode(ssml)
    words_file = check_timestamps_path(timestamps) if timestamps is not None else None
    if (
        words_file is not None
        and words_file.expanduser().absolute() == output.expanduser().absolute()
    ):
        raise UserInputError("--timestamps and --output name the same file: give two paths.")
    lex = Lexicon.load(lexicon) if lexicon is not None else None
    parse_markup(text, lexicon=lex, ssml=ssml)  # markup errors before the model loads
    speed = check_speed(speed)
    lang = normalize_lang(lang)
    provider = normalize_provider(provider)
    library = VoiceLibrary.from_spec(voices)
    library.validate(voice)
    model_path = resolve_model(model)
    plan = None
    if split is not None:
        plan = window_plan(window, first_window, window_context)

    start = time.perf_counter()
    with err_console.status(f"Loading {model_path.name} and the {lang} G2P ..."):
        synth = Synthesizer(
            model_path,
            voices=library,
            provider=provider,
            threads=threads,
            timestamps=words_file is not None,
            split=split,
            window=plan,
        )
        get_g2p(lang)  # one-time start-up cost, kept out of the synthesis time
    load_s = time.perf_counter() - start

    n_steps = len(synth.plan(text, lexicon=lex, ssml=ssml))
    chunks = []
    words = []
    offset = 0
    first_audio_s = None
    start = time.perf_counter()
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} segments"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("Speaking", total=n_steps)
        stream = synth.stream(text, voice=voice, speed=speed, lang=lang, lexicon=lex, ssml=ssml)
        for chunk in stream:
            if first_audio_s is None:
                first_audio_s = time.perf_counter() - start
            words.extend(shift(chunk.words, offset / SAMPLE_RATE))
            offset += len(chunk.samples)
            chunks.append(chunk.samples)
            progress.update(task, completed=chunk.segment + 1)
    synth_s = time.perf_counter() - start

    audio = np.concatenate(chunks)
    write_wav(output, audio, SAMPLE_RATE)
    if words_file is not None:
        write_timestamps(words_file, words)
    duration = len(audio) / SAMPLE_RATE
    summary = {
        "output": str(output),
        "model": str(model_path),
        "voice": voice,
        "lang": lang,
        "speed": speed,
        "provider": synth.providers[0],
        "sample_rate": SAMPLE_RATE,
        "duration_s": round(duration, 3),
        "segments": n_steps,
        "chunks": len(chunks),
        "load_s": round(load_s, 3),
        "synthesis_s": round(synth_s, 3),
        "first_audio_s": round(first_audio_s or 0.0, 3),
        "rtf": round(synth_s / duration, 4) if duration else None,
    }
    if words_file is not None:
        summary["timestamps"] = str(words_file)
        summary["words"] = len(words)
    if json_output:
        console.print_json(json.dumps(summary))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("Wrote", f"{output} (24 kHz mono PCM16)")
    table.add_row("Audio", f"{duration:.2f} s in {n_steps} segment(s), {len(chunks)} chunk(s)")
    table.add_row("Time", f"{synth_s:.2f} s (first audio {first_audio_s or 0:.2f} s)")
    table.add_row("RTF", f"{synth_s / duration:.3f}" if duration else "n/a")
    table.add_row("Model", f"{model_path.name} on {synth.providers[0]} (loaded in {load_s:.2f} s)")
    table.add_row("Voice", f"{voice}, {lang}, speed {speed:g}")
    if words_file is not None:
        table.add_row("Words", f"{len(words)} word timestamps in {words_file}")
    console.print(table)
