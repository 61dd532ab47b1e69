"""The offline-built CLIP tokenizer."""

from dbexp.tokenizer import build_clip_tokenizer, words_of


def test_listed_words_are_single_tokens_and_anything_else_still_tokenizes():
    words = ["photo", "phone", "sks", "dog", "dogs", "of", "a", "on", "beach", "house", "hot"]
    tokenizer = build_clip_tokenizer(words)
    for word in words:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    pieces = tokenizer.tokenize("Zebra-café 42!")
    assert pieces and tokenizer.unk_token not in pieces
    ids = tokenizer("a photo of sks dog").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == "a photo of sks dog"


def test_words_of():
    assert words_of(["A sks Dog, on the beach!", "a dog"]) == ["a", "beach", "dog", "on", "sks", "the"]


def test_the_vocabulary_is_the_same_in_every_process():
    """A model built from config must be the same model every time (the BPE trainer's tie order is not)."""
    import subprocess
    import sys

    code = (
        "import hashlib, json; from dbexp.tokenizer import build_clip_tokenizer as b; "
        "t = b(['photo', 'phone', 'house', 'hose', 'dog', 'dot', 'sks']); "
        "print(hashlib.sha1(json.dumps(t.get_vocab(), sort_keys=True).encode()).hexdigest())"
    )
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout for _ in range(3)}
    assert len(digests) == 1 and len(next(iter(digests))) > 10
