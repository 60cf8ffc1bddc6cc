"""Notebook-first reproduction of BioVITA: aligning animal sounds, photos and taxonomic names

Modules:

- `biovita_nb.audio`: Decoding field recordings of any format, channel mixing, resampling, 10-second crops and the CLAP log-mel frontend in torch.
- `biovita_nb.images`: Safe image decoding to RGB, and the deterministic evaluation and random training transforms of the image tower."""

__version__ = "0.1.0"
