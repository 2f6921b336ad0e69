import pytest

from speechvq.alignments import read_alignments
from speechvq.errors import AlignmentError

LONG = """File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 0.1
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 0.1
        intervals: size = 1
        intervals [1]:
            xmin = 0
            xmax = 0.1
            text = "hi"
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 0.1
        intervals: size = 3
        intervals [1]:
            xmin = 0
            xmax = 0.02
            text = ""
        intervals [2]:
            xmin = 0.02
            xmax = 0.065
            text = "HH"
        intervals [3]:
            xmin = 0.065
            xmax = 0.1
            text = "AY1"
"""

SHORT = """File type = "ooTextFile"
Object class = "TextGrid"

0
0.1
<exists>
1
"IntervalTier"
"phones"
0
0.1
3
0
0.02
""
0.02
0.065
"HH"
0.065
0.1
"AY1"
"""

EXPECTED = ["sil", "sil", "HH", "HH", "HH", "HH", "AY1", "AY1", "AY1", "AY1"]  # frame centres 5, 15, ... 95 ms


@pytest.mark.parametrize("text", [LONG, SHORT], ids=["long", "short"])
def test_textgrid_formats(tmp_path, text):
    folder = tmp_path / "grids" / "spk1"
    folder.mkdir(parents=True)
    (folder / "utt1.TextGrid").write_text(text)
    assert read_alignments(tmp_path / "grids") == {"spk1/utt1": EXPECTED}


def test_textgrid_without_phones_tier(tmp_path):
    path = tmp_path / "x.TextGrid"
    path.write_text(LONG.replace('"phones"', '"segments"'))
    with pytest.raises(AlignmentError, match="no tier named 'phones'"):
        read_alignments(path)
    path.write_text("hello")
    with pytest.raises(AlignmentError, match="not a Praat TextGrid"):
        read_alignments(path)


def test_tsv(tmp_path):
    path = tmp_path / "ali.tsv"
    path.write_text("u1\tsil a a b\nu2\tc\n")
    assert read_alignments(path) == {"u1": ["sil", "a", "a", "b"], "u2": ["c"]}
    path.write_text("u1 sil a\n")
    with pytest.raises(AlignmentError, match="ali.tsv:1"):
        read_alignments(path)
    path.write_text("u1\ta\nu1\tb\n")
    with pytest.raises(AlignmentError, match="duplicate"):
        read_alignments(path)
    with pytest.raises(AlignmentError, match="does not exist"):
        read_alignments(tmp_path / "missing.tsv")
