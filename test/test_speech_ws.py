"""The text-in WebSocket protocols as pure state machines: exact action sequences for sessions with several
utterances, every malformed-message path, limits, and failures reported by the transport."""

import json

import pytest

from light_tts.errors import NotFoundError
from light_tts.server.api.openai.speech_ws import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    END_MARKER,
    Close,
    OrpheusSession,
    SendBytes,
    SendJson,
    StreamSpeechSession,
    Synthesize,
    Utterance,
)

CONFIG = {"type": "session.config", "voice": "voice_a"}


def msg(**fields) -> str:
    return json.dumps(fields)


def config(**fields) -> str:
    return json.dumps({**CONFIG, **fields})


def start(index, text, fmt="wav"):
    return SendJson(
        {"type": "audio.start", "utterance_index": index, "sentence_index": 0, "sentence_text": text, "format": fmt}
    )


def done(index, total_bytes, is_error=False):
    return [
        SendJson(
            {
                "type": "audio.done",
                "utterance_index": index,
                "sentence_index": 0,
                "total_bytes": total_bytes,
                "error": is_error,
            }
        ),
        SendJson({"type": "session.done", "utterance_index": index, "total_sentences": 1}),
    ]


def errors_of(actions) -> list[tuple[str, str]]:
    return [
        (a.payload["error"]["code"], a.payload["message"])
        for a in actions
        if isinstance(a, SendJson) and a.payload["type"] == "error"
    ]


def session(**kwargs) -> StreamSpeechSession:
    s = StreamSpeechSession(max_utterance_chars=kwargs.pop("max_chars", 100), **kwargs)
    assert s.on_text(config()) == []
    return s


def test_two_utterances_on_one_session_in_order():
    s = session()
    assert s.on_text(msg(type="input.text", text="Hello, ")) == []
    assert s.on_text(msg(type="input.text", text="world.")) == []
    first = Utterance(0, "Hello, world.", "voice_a", "wav", 1.0, is_streamed=False)
    assert s.on_text(msg(type="input.done")) == [start(0, "Hello, world."), Synthesize(first)]
    # the next utterance arrives while the first is being spoken, under a new config: it waits
    assert s.on_text(msg(type="input.text", text="Again.")) == []
    assert s.on_text(msg(type="input.done")) == []
    assert s.on_text(config(response_format="pcm", stream_audio=True, seed=7, fixed_speech_tokens=50)) == []
    assert s.on_text(msg(type="input.text", text="Third.")) == []
    assert s.on_text(msg(type="input.done")) == []
    assert s.on_text(msg(type="session.close")) == []  # answered once the queue is empty
    second = Utterance(1, "Again.", "voice_a", "wav", 1.0, is_streamed=False)
    assert s.on_synthesis_done(48044) == done(0, 48044) + [start(1, "Again."), Synthesize(second)]
    third = Utterance(2, "Third.", "voice_a", "pcm", 1.0, is_streamed=True, seed=7, fixed_speech_tokens=50)
    pcm_start = SendJson({**start(2, "Third.", "pcm").payload, "sample_rate": 24000, "channels": 1})
    assert s.on_synthesis_done(100) == done(1, 100) + [pcm_start, Synthesize(third)]
    assert s.on_synthesis_done(200) == done(2, 200) + [Close(CLOSE_NORMAL, "session closed")]
    assert s.on_text(msg(type="input.text", text="late")) == []  # closed: nothing more


def test_an_empty_flush_answers_in_turn_without_audio():
    s = session()
    s.on_text(msg(type="input.text", text="One."))
    assert s.on_text(msg(type="input.done"))[-1] == Synthesize(Utterance(0, "One.", "voice_a", "wav", 1.0, False))
    assert s.on_text(msg(type="input.done")) == []  # behind utterance 0
    empty_done = SendJson({"type": "session.done", "utterance_index": 1, "total_sentences": 0})
    assert s.on_synthesis_done(10) == done(0, 10) + [empty_done]
    assert s.on_text(msg(type="input.text", text="  ")) == []
    assert s.on_text(msg(type="input.done")) == [SendJson({**empty_done.payload, "utterance_index": 2})]


@pytest.mark.parametrize(
    "first, expected",
    [
        ("not json", "message is not valid JSON"),
        ("[1, 2]", "messages must be JSON objects"),
        (msg(type="input.text", text="hi"), "the first message must be session.config, got 'input.text'"),
        (config(speed=9), "invalid session.config: speed: Input should be less than or equal to 4"),
        (config(voice=None), "invalid session.config: voice: Input should be a valid string"),
        (config(language="English"), "invalid session.config: unknown field 'language'"),
        (config(split_granularity="sentence"), "invalid session.config: split_granularity: Input should be 'none'"),
        (config(mode="instruct"), "invalid session.config: mode instruct needs an instruction"),
        (config(mode="zero_shot", instructions="Whisper."), "invalid session.config: instructions select mode"),
        (config(stream_audio=True, speed=2.0), "invalid session.config: stream_audio needs speed 1.0"),
        (config(response_format="ogg"), "invalid session.config: response_format: Input should be"),
    ],
)
def test_anything_wrong_before_a_valid_config_closes_with_1008(first, expected):
    s = StreamSpeechSession(max_utterance_chars=100)
    actions = s.on_text(first)
    ((kind, message),) = errors_of(actions)
    assert kind == "bad_request" and message.startswith(expected), message
    assert actions[-1] == Close(CLOSE_POLICY_VIOLATION, "no valid session.config")
    assert s.on_text(config()) == []  # closed


def test_an_unknown_voice_is_refused_at_config():
    def check_voice(voice_id, model):
        assert model is None  # the config named none
        if voice_id != "voice_a":
            raise NotFoundError(f"voice {voice_id!r} not found")

    s = StreamSpeechSession(max_utterance_chars=100, check_voice=check_voice)
    actions = s.on_text(config(voice="voice_zzz"))
    assert errors_of(actions) == [("not_found", "voice 'voice_zzz' not found")]
    assert actions[-1].code == CLOSE_POLICY_VIOLATION
    assert session(check_voice=check_voice).config.voice == "voice_a"


@pytest.mark.parametrize(
    "message, expected",
    [
        ("{oops", "message is not valid JSON"),
        ('"text"', "messages must be JSON objects"),
        (
            msg(type="input.audio"),
            "unknown message type 'input.audio'; expected one of session.config, input.text, input.done, session.close",
        ),
        (msg(text="no type"), "unknown message type None"),
        (msg(type="input.text", text=5), 'input.text takes exactly one field, "text", a string'),
        (msg(type="input.text", text="a", voice="b"), 'input.text takes exactly one field, "text", a string'),
        (config(speed=0), "invalid session.config: speed: Input should be greater than or equal to 0.25"),
    ],
)
def test_bad_messages_after_config_get_an_error_and_the_session_goes_on(message, expected):
    s = session()
    ((kind, text),) = errors_of(actions := s.on_text(message))
    assert len(actions) == 1 and kind == "bad_request" and text.startswith(expected), text
    s.on_text(msg(type="input.text", text="Still here."))
    # an invalid second config left the first in place
    assert s.on_text(msg(type="input.done"))[-1] == Synthesize(
        Utterance(0, "Still here.", "voice_a", "wav", 1.0, False)
    )


def test_config_cannot_change_an_utterance_in_progress():
    s = session()
    s.on_text(msg(type="input.text", text="Half"))
    assert errors_of(s.on_text(config(voice="voice_b"))) == [
        ("bad_request", "session.config cannot change an utterance in progress; send input.done first")
    ]
    assert s.on_text(msg(type="input.done"))[-1].utterance.voice_id == "voice_a"


def test_a_binary_frame_closes_with_1003():
    s = session()
    actions = s.on_binary(b"RIFF....")
    assert errors_of(actions) == [
        ("bad_request", "binary frames are not part of this protocol; send JSON text messages")
    ]
    assert actions[-1] == Close(CLOSE_UNSUPPORTED_DATA, "binary frame") and s.on_text(msg(type="input.done")) == []


def test_limits_refuse_without_losing_what_was_accepted():
    s = session(max_chars=10, max_pending=1)
    assert s.on_text(msg(type="input.text", text="12345")) == []
    ((_, text),) = errors_of(s.on_text(msg(type="input.text", text="678901")))
    assert text.startswith("this piece would make the utterance longer than 10 characters; it was not added")
    s.on_text(msg(type="input.done"))  # utterance 0 is spoken
    s.on_text(msg(type="input.text", text="next"))
    assert s.on_text(msg(type="input.done")) == []  # utterance 1 waits: the queue is full now
    s.on_text(msg(type="input.text", text="more"))
    ((kind, text),) = errors_of(s.on_text(msg(type="input.done")))
    assert kind == "overloaded" and "the text stays buffered" in text
    s.on_synthesis_done(1)
    assert s.on_text(msg(type="input.done")) == []  # now accepted, behind utterance 1
    assert s.on_synthesis_done(1)[-1] == Synthesize(Utterance(2, "more", "voice_a", "wav", 1.0, False))


def test_a_failed_synthesis_is_reported_and_the_session_goes_on():
    s = session()
    s.on_text(msg(type="input.text", text="One."))
    s.on_text(msg(type="input.done"))
    s.on_text(msg(type="input.text", text="Two."))
    s.on_text(msg(type="input.done"))
    actions = s.on_synthesis_done(0, NotFoundError("voice 'voice_a' not found"))
    message = "utterance 0 failed: voice 'voice_a' not found"
    assert actions[0] == SendJson(
        {
            "type": "error",
            "message": message,
            "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "not_found"},
        }
    )
    assert actions[1:3] == done(0, 0, is_error=True) and isinstance(actions[-1], Synthesize)
    actions = s.on_synthesis_done(4000, KeyError("/internal/detail"))  # after some audio was sent
    message = "utterance 1 failed: internal error"
    assert actions[0] == SendJson(
        {
            "type": "error",
            "message": message,
            "error": {"message": message, "type": "server_error", "param": None, "code": "internal"},
            "partial_audio": True,
            "action": "discard",
        }
    )
    with pytest.raises(RuntimeError):
        s.on_synthesis_done(0)


def test_close_drops_unflushed_text_and_refuses_more():
    s = session()
    s.on_text(msg(type="input.text", text="never flushed"))
    assert s.on_text(msg(type="session.close")) == [Close(CLOSE_NORMAL, "session closed")]


def test_input_after_close_request_is_refused_while_the_queue_drains():
    s = session()
    s.on_text(msg(type="input.text", text="One."))
    s.on_text(msg(type="input.done"))
    assert s.on_text(msg(type="session.close")) == []
    assert errors_of(s.on_text(msg(type="input.text", text="x"))) == [
        ("bad_request", "the session is closing (session.close was sent)")
    ]
    assert s.on_synthesis_done(5)[-1] == Close(CLOSE_NORMAL, "session closed")


# ---- /ws/tts


def test_orpheus_utterances_end_with_the_marker():
    s = OrpheusSession(max_utterance_chars=100)
    first = Utterance(0, "Hello.", "voice_a", "pcm", 1.0, is_streamed=True)
    assert s.on_text(msg(text="Hello.", voice="voice_a")) == [Synthesize(first)]
    assert s.on_text(msg(text="Bye.")) == []  # the voice sticks; waits for the first
    assert s.on_synthesis_done(9600) == [
        SendBytes(END_MARKER),
        Synthesize(Utterance(1, "Bye.", "voice_a", "pcm", 1.0, True)),
    ]
    assert s.on_text("__END__") == []
    assert s.on_synthesis_done(4800) == [SendBytes(END_MARKER), Close(CLOSE_NORMAL, "session closed")]

    s = OrpheusSession(max_utterance_chars=100)
    assert s.on_text(msg(end=True)) == [Close(CLOSE_NORMAL, "session closed")]


def test_orpheus_model_sticks_and_seed_is_per_message():
    s = OrpheusSession(max_utterance_chars=100)
    first = Utterance(0, "Hi.", "tara", "pcm", 1.0, is_streamed=True, seed=7, fixed_speech_tokens=70, model="orpheus")
    assert s.on_text(msg(text="Hi.", voice="tara", model="orpheus", seed=7, fixed_speech_tokens=70)) == [
        Synthesize(first)
    ]
    s.on_text(msg(text="Bye."))
    second = Utterance(1, "Bye.", "tara", "pcm", 1.0, is_streamed=True, model="orpheus")
    assert s.on_synthesis_done(2048)[-1] == Synthesize(second)


@pytest.mark.parametrize(
    "message, expected",
    [
        ("{bad", "message is not valid JSON"),
        (msg(text="Hi."), '"voice" (a model\'s voice name, or a saved voice id) is required in the first message'),
        (msg(text="Hi.", voice="tara", seed=-1), '"seed" must be an integer in [0, '),
        (msg(text="Hi.", voice="tara", seed="1"), '"seed" must be an integer'),
        (msg(text="Hi.", voice="tara", model=""), '"model" must be a model id'),
        (msg(text="Hi.", voice="tara", fixed_speech_tokens=0), '"fixed_speech_tokens" must be a positive integer'),
        (msg(text="", voice="voice_a"), '"text" must be a non-empty string'),
        (msg(text=["Hi"], voice="voice_a"), '"text" must be a non-empty string'),
        (msg(text="x" * 101, voice="voice_a"), '"text" is longer than 100 characters'),
        (msg(text="Hi.", voice="voice_a", speed=2), "unknown field(s) ['speed']"),
        (msg(end=False), "unknown field(s) ['end']"),
    ],
)
def test_orpheus_bad_messages_get_an_error_and_the_connection_goes_on(message, expected):
    s = OrpheusSession(max_utterance_chars=100)
    ((kind, text),) = errors_of(s.on_text(message))
    assert kind == "bad_request" and text.startswith(expected), text
    assert isinstance(s.on_text(msg(text="Hi.", voice="voice_a"))[-1], Synthesize)


def test_orpheus_failure_is_reported_before_the_marker_and_binary_closes():
    s = OrpheusSession(max_utterance_chars=100)
    s.on_text(msg(text="Hi.", voice="voice_gone"))
    actions = s.on_synthesis_done(0, NotFoundError("voice 'voice_gone' not found"))
    assert errors_of(actions) == [("not_found", "utterance 0 failed: voice 'voice_gone' not found")]
    assert actions[-1] == SendBytes(END_MARKER)
    assert s.on_binary(b"\x00")[-1] == Close(CLOSE_UNSUPPORTED_DATA, "binary frame")
