"""Every text the bot sends its users, in one place: the console's and Telegram's replies and
Telegram's command menu. The product speaks Russian."""

from __future__ import annotations

UNAVAILABLE = "Модель временно недоступна, попробуйте чуть позже."  # Triton or the history is down
RESET_DONE = "Начнём сначала."  # /reset: the dialogue is forgotten
START = (  # /start
    "Привет! Я бот-собеседник: отвечаю с помощью нейросети ruDialoGPT и помню три последние "
    "реплики разговора. Просто напиши мне что-нибудь.\n/help — подсказка, /reset — начать заново."
)
HELP = (  # /help, and any other command
    "Пиши сообщения — я отвечаю, учитывая три последние реплики.\n"
    "/reset — забыть разговор и начать сначала.\n"
    "В группе я отвечаю, когда меня упоминают (@имя) или отвечают на моё сообщение.\n"
    "Ответы пишет нейросеть: они бывают странными и не обязательно верны. Оценивай их кнопками "
    "👍/👎 или такой же реакцией.\n"
    "/privacy — что я храню и как это удалить, /forget — удалить всё об этом чате, "
    "/share — разрешить учить следующую модель на этом чате (/share off — отозвать)."
)
FALLBACK = "Хм, даже не знаю, что сказать. Расскажи ещё что-нибудь?"  # the model said nothing, twice
NOT_TEXT = "Я понимаю только текст — напиши, пожалуйста, словами."  # stickers, photos, voice…
REFUSED = "Извините, в этом чате бот недоступен."  # a chat not on ALLOWED_CHAT_IDS
FLOOD_NOTE = (  # once per flood, when more messages came than a chat's line holds (bot/waiting.py)
    "Вы пишете быстрее, чем я успеваю отвечать: отвечу на последние сообщения разом, а самые ранние пропущу."
)
SORRY = "Что-то пошло не так. Попробуйте, пожалуйста, ещё раз чуть позже."  # an unexpected error
COMMAND_MENU = {  # Telegram's command menu: each command and its description
    "start": "что это за бот",
    "help": "подсказка",
    "reset": "начать разговор заново",
    "privacy": "что бот хранит и как это удалить",
    "forget": "удалить всё, что бот хранит об этом чате",
    "share": "разрешить учить модель на этом чате (/share off — отозвать)",
}

# -- feedback, consent and privacy (bot/feedback.py; docs/bot.md, "Feedback, consent and privacy") --
PRIVACY = (  # /privacy; {keep}, {days}: bot/history/votes.py's retention, {consent}: one of CONSENT
    "Что я храню об этом чате:\n"
    "• последние {keep} сообщений разговора — чтобы отвечать с учётом контекста;\n"
    "• свои ответы: на какие реплики отвечал, текст, версию модели, настройки генерации, время;\n"
    "• оценки 👍/👎 (кнопками или реакциями): кто как оценил ответ;\n"
    "• согласие чата на обучение (/share) и кто его дал;\n"
    "• номера последних {keep} полученных сообщений, без текста, — чтобы не ответить дважды "
    "(они остаются и после /forget).\n"
    "Ответы и оценки хранятся не дольше {days} дней; из ответов без оценок — только последние {keep}.\n"
    "/reset — забыть разговор; /forget — удалить всё об этом чате: разговор, ответы, оценки, согласие.\n"
    "Обучение следующей модели на диалогах этого чата: {consent}. /share — разрешить, /share off — "
    "отозвать. Модель, уже обученная на этом чате, сохранит выученное и после /forget; следующее "
    "обучение его не использует."
)
CONSENT = {  # (the chat's own choice or the default: Consent.chosen, Consent.shared)
    (True, True): "разрешено этим чатом (/share)",
    (True, False): "запрещено этим чатом (/share off)",
    (False, True): "разрешено по умолчанию этого бота",
    (False, False): "не разрешено (так по умолчанию)",
}
SHARE_ON = (  # /share
    "Спасибо! Понравившиеся (👍) ответы этого чата с репликами перед ними могут попасть в обучение "
    "следующей модели. Отозвать: /share off."
)
SHARE_OFF = (  # /share off
    "Хорошо: диалоги этого чата не попадут в обучение следующих моделей. Модель, уже обученная на "
    "них, сохранит выученное; удалить всё об этом чате: /forget."
)
SHARE_USAGE = "/share — разрешить учить следующую модель на этом чате, /share off — отозвать."
SHARE_ADMINS_ONLY = (  # /share in a group by someone who is not its administrator
    "В группе разрешить обучение на её диалогах может только администратор; отозвать (/share off) — любой."
)
SHARE_UNCHECKED = "Не удалось проверить, администратор ли вы. Попробуйте, пожалуйста, чуть позже."
FORGOTTEN = (  # /forget; the counts: bot/history/votes.py's Forgotten
    "Удалил всё, что хранил об этом чате: сообщений — {messages}, ответов модели — {replies}, "
    "оценок — {votes}, согласий — {consent}, ожидавших ответа сообщений — {inbox}. Модель, уже "
    "обученная на этом чате, сохранит выученное; следующее обучение его не использует."
)
VOTED = {1: "Спасибо! Ваша оценка: 👍", -1: "Спасибо! Ваша оценка: 👎"}  # a press answered (a toast)
VOTE_GONE = "Этот ответ уже удалён, оценить его нельзя. Но спасибо!"  # a press on a forgotten reply
VOTE_FAILED = "Не получилось сохранить оценку, попробуйте чуть позже."  # the store failed
NOTHING_TO_RATE = "Пока нечего оценивать: сначала получите ответ."  # the console's /good before a reply
RATED = "Оценка {emoji} записана в журнал (stderr)."  # the console's /good, /bad
