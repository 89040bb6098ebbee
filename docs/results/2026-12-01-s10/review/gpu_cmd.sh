PYTHONPATH=$PWD PYTHONUNBUFFERED=1 python3 - <<'P'
import torch,torch.nn.functional as F
from minimoe.kernels import fused_moe as fm
from minimoe.kernels.fused_moe_small import SharedExpert
torch.manual_seed(0);d='cuda';b=torch.bfloat16
def mk(*s):return (torch.randn(*s,device=d,dtype=b)*0.02)
for nm,E,K,D,I,IS,g in[("qwen15",60,4,2048,1408,5632,1),("dsv2l",64,6,2048,1408,2816,0),("dsv3",256,8,7168,2048,2048,0)]:
 w13=mk(E,2*I,D);w2=mk(E,D,I);L=6
 sh=[SharedExpert(mk(2*IS,D),mk(D,IS),mk(D) if g else None) for _ in range(L)]
 for T in range(1,E//(4*K)+1):
  x=mk(T,D)*50;ids=torch.stack([torch.randperm(E,device=d)[:K] for _ in range(T)]);w=torch.rand(T,K,device=d)
  def one(s,fuse):
   if fuse:return fm.fused_moe(x,w13,w2,ids,w,shared=s)
   y=fm.fused_moe(x,w13,w2,ids,w);gu=F.linear(x,s.w13);z=F.linear(F.silu(gu[:,:IS])*gu[:,IS:],s.w2)
   if s.gate is not None:z=z*torch.sigmoid(F.linear(x,s.gate[None]))
   return y+z
  err=((one(sh[0],1).float()-one(sh[0],0).float()).abs().max()/one(sh[0],0).float().abs().max()).item()
  r=[]
  for fuse in(1,0):
   f=lambda:[one(s,fuse) for s in sh]
   f();torch.cuda.synchronize();G=torch.cuda.CUDAGraph()
   with torch.cuda.graph(G):f()
   for _ in range(3):G.replay()
   a,e=torch.cuda.Event(1),torch.cuda.Event(1);a.record()
   for _ in range(50):G.replay()
   e.record();e.synchronize();r.append(a.elapsed_time(e)/50/L*1000)
  print(nm,"T",T,"fused %.1f us  apart %.1f us  ratio %.3f  relerr %.1e"%(r[0],r[1],r[0]/r[1],err))
 del w13,w2,sh;torch.cuda.empty_cache()
P
