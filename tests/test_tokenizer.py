"""The offline CLIP tokenizer built from open_clip's BPE file gives open_clip's ids."""
import open_clip
import pytest
from transformers import CLIPTokenizer

PROMPTS = [
    "a red triangle",
    "A Photo of a BLUE circle, in van-gogh style!",
    'Van Gogh\'s "Starry Night" (1889)',
    "hello   world\t123 4.5%",
    "café über naïve façade",
    "emoji 🙂 and 日本語",
    "dots;dotted:dotty... SQUARE?!",
    "x-ray & y_z #hash @at",
    "",
    "a " * 100,  # truncated: the end-of-text token must still close the 77 ids
    "nudity, naked woman, NSFW",
    "a painting of a blue star in the style of van gogh",
]
BOS, EOS = 49406, 49407


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_equal_open_clip(tokenizer_dir, prompt):
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    ours = tok(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    theirs = open_clip.tokenize([prompt])[0].tolist()
    # open_clip pads with id 0 after the end-of-text token, Stable Diffusion's tokenizer pads with end-of-text
    theirs = theirs[:theirs.index(EOS) + 1] + [EOS] * (76 - theirs.index(EOS))
    assert ours == theirs
    assert ours[0] == BOS and EOS in ours and len(ours) == 77


def test_vocabulary_and_special_tokens(tokenizer_dir):
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    assert len(tok) == 49408
    assert tok.bos_token_id == BOS and tok.eos_token_id == EOS and tok.pad_token_id == EOS
    assert tok.convert_ids_to_tokens([BOS, EOS]) == ["<|startoftext|>", "<|endoftext|>"]
    assert tok.model_max_length == 77


def test_literal_special_token_text(tokenizer_dir):
    """A known difference, kept on purpose: like Stable Diffusion's own (Hugging Face) tokenizer, ours reads the
    literal text '<|endoftext|>' as the special token, where open_clip spells it out as ordinary characters."""
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    ours = tok("end <|endoftext|> mid").input_ids
    assert ours[:3] == [BOS, 806, EOS]
    assert open_clip.tokenize(["end <|endoftext|> mid"])[0].tolist()[2] != EOS
