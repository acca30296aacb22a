from ttc.tasks import arith, synth_code


def test_arith_is_deterministic_per_seed() -> None:
    a = [p.expression for p in arith.generate(20, steps=4, seed=3)]
    assert a == [p.expression for p in arith.generate(20, steps=4, seed=3)]
    assert a != [p.expression for p in arith.generate(20, steps=4, seed=4)]


def test_arith_left_to_right_chain() -> None:
    p = arith.parse_expression("37+45*2-18")
    assert p.values == [37, 82, 164, 146]
    assert p.solution() == "37+45=82\n82*2=164\n164-18=146\nA:146\n"
    assert p.prompt() == "Q:37+45*2-18=?\n"
    assert p.prompt(direct=True) == "D:37+45*2-18=?\nA:"
    assert p.solution(direct=True) == "146\n"


def test_arith_values_stay_in_range_and_steps_count() -> None:
    for p in arith.generate(200, steps=6, seed=0):
        assert len(p.ops) == 6
        assert all(0 <= v <= 999 for v in p.values)


def test_checker_rejects_wrong_answers_and_wrong_steps() -> None:
    p = arith.parse_expression("37+45*2-18")
    assert arith.extract_answer(p.solution()) == "146"
    assert p.step_labels(p.solution()) == [True, True, True, True]
    wrong_step = "37+45=82\n82*2=166\n166-18=148\nA:148\n"
    assert p.step_labels(wrong_step) == [True, False, False, False]
    # a step that is right on its own but carries a wrong value forward stays bad
    carried = "37+45=83\n83*2=166\n"
    assert p.step_labels(carried) == [False, False]
    assert arith.extract_answer("37+45=82\n") is None


def test_code_task_generator_and_checker() -> None:
    probs = synth_code.generate(30, seed=1)
    assert [p.expression for p in probs] == [p.expression for p in synth_code.generate(30, seed=1)]
    p = synth_code.CodeProblem("3*x+2")
    assert p.prompt() == "C:f(1)=5 f(2)=8 f(3)=11\n"
    assert synth_code.passes(p.program, p.hidden)
    assert synth_code.passes("def f(x): return 3*(x+1)-1", p.hidden)  # equivalent program
    assert not synth_code.passes("def f(x): return 3*x+3", p.hidden)
    assert synth_code.passes("def f(x): return 2*x+3", p.visible[:1])  # visible cases are weaker
    assert not synth_code.passes("def f(x): return 2*x+3", p.hidden)


def test_code_checker_refuses_anything_but_arithmetic() -> None:
    assert synth_code.compile_arithmetic("def f(x): return __import__('os').getcwd()") is None
    assert synth_code.compile_arithmetic("def f(x): return y") is None
    assert synth_code.compile_arithmetic("def f(x): return x.real") is None
    assert synth_code.compile_arithmetic("print(1)") is None
