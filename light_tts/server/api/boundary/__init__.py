"""What every HTTP request passes through at the server's edge, before and around its route: API keys (auth),
the one body bound (body_limit) and the body deadline (body_deadline), the disconnect watch (http_watch), and the
error bodies in each API's shape (error_bodies: LightTTS {error, kind}, OpenAI {error: {message, type, param,
code}}). May import the rest of api/'s helpers below it, ipc and runtime; never a route module."""
