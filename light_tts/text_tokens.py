"""The special tokens each CosyVoice tokenizer version adds to the Qwen tokenizer (upstream CosyVoice2Tokenizer and
CosyVoice3Tokenizer), as data: the frontend adds them, and a family's config reader finds their ids from them."""

# Upstream adds these in this order; their ids follow the tokenizer files' own added tokens
# (151646.. for the released files, so len == 151663).
COSYVOICE2_SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endofprompt|>",
    "[breath]",
    "<strong>",
    "</strong>",
    "[noise]",
    "[laughter]",
    "[cough]",
    "[clucking]",
    "[accent]",
    "[quick_breath]",
    "<laughter>",
    "</laughter>",
    "[hissing]",
    "[sigh]",
    "[vocalized-noise]",
    "[lipsmack]",
    "[mn]",
)

# CosyVoice3 adds <|endofsystem|>, then phoneme tokens: CMU phones (each vowel bare and with stresses 0-2) and
# pinyin finals/initials with tones, in upstream's order (280 tokens in all; <|endofprompt|> stays 151646).
_CMU_VOWELS = "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split()
_CMU_CONSONANTS = "B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split()
_PINYIN = (
    "a ai an ang ao b c ch d e ei en eng f g h i ian in ing iu ià iàn iàng iào iá ián iáng iáo iè ié iòng ióng iù "
    "iú iā iān iāng iāo iē iě iōng iū iǎ iǎn iǎng iǎo iǒng iǔ j k l m n o ong ou p q r s sh t u uang ue un uo uà "
    "uài uàn uàng uá uái uán uáng uè ué uì uí uò uó uā uāi uān uāng uē uě uī uō uǎ uǎi uǎn uǎng uǐ uǒ vè w x y z "
    "zh à ài àn àng ào á ái án áng áo è èi èn èng èr é éi én éng ér ì ìn ìng í ín íng ò òng òu ó óng óu ù ùn ú "
    "ún ā āi ān āng āo ē ēi ēn ēng ě ěi ěn ěng ěr ī īn īng ō ōng ōu ū ūn ǎ ǎi ǎn ǎng ǎo ǐ ǐn ǐng ǒ ǒng ǒu ǔ ǔn ǘ ǚ "
    "ǜ"
).split()
COSYVOICE3_SPECIAL_TOKENS = (
    *COSYVOICE2_SPECIAL_TOKENS,
    "<|endofsystem|>",
    *(
        f"[{p}{stress}]"
        for p in sorted(_CMU_VOWELS + _CMU_CONSONANTS)
        for stress in (("", "0", "1", "2") if p in _CMU_VOWELS else ("",))
    ),
    *(f"[{p}]" for p in _PINYIN),
)
SPECIAL_TOKENS = {"cosyvoice2": COSYVOICE2_SPECIAL_TOKENS, "cosyvoice3": COSYVOICE3_SPECIAL_TOKENS}
