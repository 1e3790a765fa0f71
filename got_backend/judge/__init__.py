"""Verify, pick and reflect (docs/ALGORITHM.md §13 and §12): an MLLM judge scores GoT's candidates
(judge.Judge, scores), best-of-N picks among seeds and sampled chains (candidates.best_of_n), PARM stops weak
candidates early (parm.parm_best_of_n) and PARM++ reflection corrects the pick through GoT's edit mode
(reflect.reflect)."""

from .candidates import Candidate, Selection, best_of_n
from .judge import CandidateScore, Judge
from .parm import ParmSettings, parm_best_of_n
from .reflect import Reflection, ReflectionRound, first_round, reflect
from .scores import JudgeInputError

__all__ = ["Candidate", "CandidateScore", "Judge", "JudgeInputError", "ParmSettings", "Reflection",
           "ReflectionRound", "Selection", "best_of_n", "first_round", "parm_best_of_n", "reflect"]
