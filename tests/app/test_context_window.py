from kvchat.app.core.context_window import (
    FIRST_TOKENS_PER_BYTE,
    MESSAGE_OVERHEAD,
    estimate_tokens,
    first_in_view,
    learn_tokens_per_byte,
    reply_budget,
)

TURNS = [True, False] * 5  # user, reply, user, reply...


def test_everything_stays_while_it_fits() -> None:
    costs = [100] * 10
    assert first_in_view(costs, TURNS, fixed=50, n_ctx=2048, budget=512, current=0) == 0
    # Exactly full still fits.
    assert first_in_view(costs, TURNS, fixed=536, n_ctx=2048, budget=512, current=0) == 0


def test_the_oldest_turns_leave_whole_with_some_slack() -> None:
    costs = [100] * 10  # 1000 tokens of turns
    # 50 + 1000 + 512 > 1500: must drop. Without slack, dropping one turn (200)
    # would do; the slack of 1500 / 8 makes it drop two.
    first = first_in_view(costs, TURNS, fixed=50, n_ctx=1500, budget=512, current=0)
    assert first == 4
    assert TURNS[first]  # a turn starts with the person's message
    # The next turn keeps that start while it still fits (the cache stays reusable)...
    costs += [100, 100]
    turns = [*TURNS, True, False]
    assert first_in_view(costs, turns, fixed=50, n_ctx=1500, budget=512, current=4) == 4
    # ... and moves on, again with slack, once it does not.
    costs += [100, 100]
    turns = [*turns, True, False]
    assert first_in_view(costs, turns, fixed=50, n_ctx=1500, budget=512, current=4) == 8


def test_the_view_never_moves_back() -> None:
    costs = [10] * 10
    assert first_in_view(costs, TURNS, fixed=0, n_ctx=4096, budget=512, current=6) == 6


def test_the_message_being_answered_always_stays() -> None:
    costs = [100] * 9 + [5000]  # ... and a reply being continued after the last user message
    turns = [True, False] * 5
    assert first_in_view(costs, turns, fixed=50, n_ctx=2048, budget=512, current=0) == 8
    # A lone message longer than the context is still sent: the engine refuses it
    # with both numbers, rather than the app cutting it.
    assert first_in_view([100, 100, 9000], [True, False, True], 50, 2048, 512, 0) == 2


def test_a_start_past_the_end_after_an_edit_comes_back_to_the_last_turn() -> None:
    assert first_in_view([10, 10, 10], [True, False, True], 0, 4096, 512, current=8) == 2
    assert first_in_view([], [], 0, 4096, 512, current=3) == 0


def test_the_reply_budget_is_the_limit_but_at_most_a_quarter() -> None:
    assert reply_budget(1024, 4096) == 1024
    assert reply_budget(1024, 2048) == 512
    assert reply_budget(100, 512) == 100


def test_estimates_err_high_until_measured() -> None:
    text = "naïve café " * 50  # 650 bytes of UTF-8
    assert estimate_tokens(text, FIRST_TOKENS_PER_BYTE) == 650 + MESSAGE_OVERHEAD
    learned = learn_tokens_per_byte(
        prompt_tokens=30 + 2 * MESSAGE_OVERHEAD + 200, fixed_tokens=30, texts=[text, text]
    )
    assert learned is not None
    assert 200 / 1300 < learned <= FIRST_TOKENS_PER_BYTE  # above the mean: a margin
    assert learn_tokens_per_byte(40, 30, ["hi"]) is None  # too little text to say
