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
    "Ответы пишет нейросеть: они бывают странными и не обязательно верны."
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
}
