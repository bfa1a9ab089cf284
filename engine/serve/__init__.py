"""`engine serve`: the interview behind a web page for candidates, and an operator's view.

    app.py       the server: admits pages (invite tokens, Origin, --max-sessions), runs a Session each
    link.py      one page's WebSocket <-> its Session (the page protocol is described there)
    player.py    BrowserPlayer: the page as the session's speaker, reporting what it has played
    operator.py  /sessions: every session in the database, live
    main.py      the `engine serve` and `engine invite` commands
    fake_page.py a scripted page (no browser) for tests and benchmarks
    static/      the page: plain HTML and JavaScript, with two AudioWorklets (capture, playback)
"""
