"""`sibrar encode text|image|audio`: raw content -> feature files (vector modalities) of a dataset."""

from __future__ import annotations

import argparse
import warnings
from typing import TYPE_CHECKING

from sibrar.errors import EncoderError

if TYPE_CHECKING:
    from sibrar.encoders import EncodeReport

_TEXT_EXAMPLE = '"{movie_title} ({release_year}). Genres: {class}"'


def register(sub: argparse._SubParsersAction) -> None:
    encode = sub.add_parser("encode", help="encode raw text, images or audio into a dataset's feature files")
    kinds = encode.add_subparsers(dest="encode_kind", required=True, metavar="KIND")

    text = kinds.add_parser("text", help="sentence-transformers vectors of a text built from entity columns")
    _common(text, default_modality="text", default_batch=32)
    source = text.add_mutually_exclusive_group(required=True)
    source.add_argument("--template", help=f"text built from columns, e.g. {_TEXT_EXAMPLE}")
    source.add_argument("--column", help="encode this one column as it is")
    text.add_argument("--model", default="all-MiniLM-L6-v2",
                      help="SentenceTransformer name or local folder (default: the bundled all-MiniLM-L6-v2, offline)")
    text.add_argument("--max-length", type=int, default=None, help="tokens kept per text (default: the model's)")
    text.add_argument("--seq-sep", default=", ", help="separator for token_seq columns (default ', ')")
    text.add_argument("--join", action="append", default=[], metavar="COLUMN=SEP",
                      help="separator for one token_seq column, e.g. --join 'movie_title= ' (repeatable)")
    text.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")
    text.set_defaults(func=_text)

    image = kinds.add_parser("image", help="open_clip image-tower vectors of posters / cover art")
    _common(image, default_modality="image", default_batch=16)
    _files(image)
    image.add_argument("--model", default="ViT-B-32", help="open_clip architecture or open_clip model folder")
    image.add_argument("--pretrained", default="openai",
                       help="checkpoint file or open_clip tag (tags need internet); 'none' = random init")
    image.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")
    image.add_argument("--workers", type=int, default=None, help="threads decoding images (default min(4, CPUs))")
    image.set_defaults(func=_image)

    audio = kinds.add_parser("audio", help="log-mel / MFCC / chroma / spectral statistics of audio clips")
    _common(audio, default_modality="audio", default_batch=None)
    _files(audio)
    audio.add_argument("--sample-rate", type=int, default=22050, help="analysis rate in Hz (default 22050)")
    audio.add_argument("--n-mels", type=int, default=64)
    audio.add_argument("--n-mfcc", type=int, default=20)
    audio.add_argument("--chunk-seconds", type=float, default=30.0, help="decode/analyse this much at a time")
    audio.add_argument("--max-seconds", type=float, default=None, help="analyse only the start of each clip")
    audio.add_argument("--workers", type=int, default=1, help="clips analysed at once, in threads (default 1)")
    audio.set_defaults(func=_audio)


def _common(parser: argparse.ArgumentParser, *, default_modality: str, default_batch: int | None) -> None:
    parser.add_argument("dataset", help="fetch name or folder of atomic files")
    parser.add_argument("--entity", choices=("item", "user"), default="item")
    parser.add_argument("--modality", default=default_modality, help=f"feature name (default {default_modality})")
    parser.add_argument("--out", help="output folder (default <dataset>/features)")
    parser.add_argument("--root", help="data root for fetch names")
    if default_batch is not None:
        parser.add_argument("--batch-size", type=int, default=default_batch,
                            help=f"inputs per forward pass (default {default_batch})")
    normalize = parser.add_mutually_exclusive_group()
    normalize.add_argument("--normalize", dest="normalize", action="store_true", default=None, help="L2-normalise vectors")
    normalize.add_argument("--no-normalize", dest="normalize", action="store_false", help="keep raw vectors")
    parser.add_argument("--force", action="store_true", help="encode even if inputs and settings are unchanged")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _files(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dir", help="folder of files named <id>.<ext> (searched recursively)")
    source.add_argument("--column", help="column of file paths in the entity file")
    parser.add_argument("--base", help="folder that relative paths in --column start from (default: the dataset)")


def _print(report: EncodeReport) -> int:
    print(report.summary())
    return 0


def _parse_join(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        column, sep, value = pair.partition("=")
        if not sep or not column:
            raise EncoderError(f"--join {pair!r}: expected COLUMN=SEPARATOR, e.g. --join 'movie_title= '")
        out[column] = value
    return out


def _text(args: argparse.Namespace) -> int:
    from sibrar.encoders import TextEncoderConfig, encode_text

    config = TextEncoderConfig(model=args.model, max_length=args.max_length, batch_size=args.batch_size,
                               normalize=True if args.normalize is None else args.normalize)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*could not be encoded")  # the summary lists them
        report = encode_text(args.dataset, entity=args.entity, modality=args.modality, template=args.template,
                             column=args.column, seq_sep=args.seq_sep, join=_parse_join(args.join), config=config,
                             device=args.device, out=args.out, root=args.root, force=args.force,
                             progress=not args.no_progress)
    return _print(report)


def _image(args: argparse.Namespace) -> int:
    from sibrar.encoders import ImageEncoderConfig, encode_images

    pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    config = ImageEncoderConfig(model=args.model, pretrained=pretrained, batch_size=args.batch_size,
                                normalize=True if args.normalize is None else args.normalize)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*could not be encoded")
        report = encode_images(args.dataset, entity=args.entity, modality=args.modality, directory=args.dir,
                               column=args.column, base=args.base, config=config, device=args.device, out=args.out,
                               root=args.root, force=args.force, progress=not args.no_progress, workers=args.workers)
    return _print(report)


def _audio(args: argparse.Namespace) -> int:
    from sibrar.encoders import AudioEncoderConfig, encode_audio

    config = AudioEncoderConfig(sample_rate=args.sample_rate, n_mels=args.n_mels, n_mfcc=args.n_mfcc,
                                chunk_seconds=args.chunk_seconds, max_seconds=args.max_seconds,
                                normalize=bool(args.normalize))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*could not be encoded")
        report = encode_audio(args.dataset, entity=args.entity, modality=args.modality, directory=args.dir,
                              column=args.column, base=args.base, config=config, out=args.out, root=args.root,
                              force=args.force, progress=not args.no_progress, workers=args.workers)
    return _print(report)
