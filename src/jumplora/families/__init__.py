"""Model families: how a seq2seq, causal or encoder model is trained on and predicts a task."""

from jumplora.families.base import Family
from jumplora.families.causal import CausalFamily
from jumplora.families.encoder import EncoderFamily
from jumplora.families.loading import FAMILIES, detect_family, load_model
from jumplora.families.seq2seq import Seq2SeqFamily

__all__ = ["FAMILIES", "CausalFamily", "EncoderFamily", "Family", "Seq2SeqFamily", "detect_family", "load_model"]
