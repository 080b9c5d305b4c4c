"""Reading what a function compiles to: the tests that check which computation runs
(a fused backward, the chunkwise form, one batched scan) walk its jaxpr with these."""

import jax
import jax.extend.core


def equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs nested in it (scan bodies,
    custom-derivative rules, pjit calls), outer ones first."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from equations(sub)


def scans(fn, *args):
    """The ``scan`` equations of ``fn(*args)``'s jaxpr, nested ones included."""
    return [e for e in equations(jax.make_jaxpr(fn)(*args).jaxpr) if e.primitive.name == "scan"]


def scan_dots(fn, *args):
    """``(reverse, number of dot_generals directly in the body)`` of every scan."""
    return [(e.params["reverse"],
             sum(b.primitive.name == "dot_general" for b in e.params["jaxpr"].jaxpr.eqns))
            for e in scans(fn, *args)]
